//! The config parser on arbitrary text: `Config::parse_str` never panics or hangs; an error
//! points at a place inside the text; a config that parses gives the same result twice and
//! its derived values (digest, listen addresses, client options) never panic.
//!
//! Texts that mention `include` or `_file` are skipped: an include or `cluster_secret_file`
//! reads a file named by the input, which tests the machine, not the parser. Both are
//! covered by tests/config.rs (`/dev/zero` included).

#![no_main]

use libfuzzer_sys::fuzz_target;
use msgc::client::ClientOptions;
use msgc::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lower = text.to_ascii_lowercase();
    if lower.contains("include") || lower.contains("_file") {
        return;
    }
    match Config::parse_str(text, "fuzz.conf") {
        Ok(config) => {
            assert_eq!(
                Config::parse_str(text, "fuzz.conf").as_ref(),
                Ok(&config),
                "parsing is not deterministic"
            );
            let _ = config.server.digest();
            let _ = config.listener.socket_addrs(config.server.port);
            let _ = ClientOptions::from(&config.client);
            assert!(config.server.max_frame_size >= msgc::proto::MIN_MAX_FRAME);
            assert!(config.server.max_frame_size <= msgc::proto::MAX_MAX_FRAME);
            assert!(!config.client.server.is_empty(), "a client with no server to try");
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(!e.message().is_empty(), "an error without a message");
            assert_eq!(e.file(), "fuzz.conf", "error names another file: {shown}");
            // Lines are 1-based; the last line may end without a newline.
            let lines = text.split('\n').count() as u32;
            assert!(e.line() >= 1 && e.line() <= lines, "error at line {} of {lines}: {shown}", e.line());
            let line_text = text.split('\n').nth(e.line() as usize - 1).unwrap_or("");
            let cols = line_text.chars().count() as u32 + 1;
            assert!(e.col() >= 1 && e.col() <= cols, "error at column {} of {cols}: {shown}", e.col());
        }
    }
});
