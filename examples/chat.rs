//! A minimal msgc client: joins a group, says hello, prints what arrives for a few seconds.
//!
//! ```sh
//! cargo run --release --bin msgc-server &
//! cargo run --example chat -- 127.0.0.1:4809 lobby
//! ```

use std::time::Duration;

use bytes::Bytes;
use msgc::client::{Client, Event};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:4809".into());
    let group = args.next().unwrap_or_else(|| "lobby".into());
    let mut client = Client::builder().server(server).name("chat-example").connect().await?;
    println!("connected as session {}", client.session_id());
    client.join(&group).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, client.next_event()).await {
        match event {
            // Membership starts with the view that lists us: only then is our own message
            // sure to come back to us too.
            Event::View(v)
                if v.members.iter().any(|m| m.session == client.session_id())
                    && v.cause == msgc::proto::Cause::Join
                    && v.subject == client.session_id() =>
            {
                println!("[{}] joined, view {} with {} members", v.group, v.view_id, v.members.len());
                client.multicast(&group, Bytes::from_static(b"hello from the chat example")).await?;
            }
            Event::Message { group, sender, seq, payload } => {
                println!("[{group}] {sender} #{seq}: {}", String::from_utf8_lossy(&payload))
            }
            Event::View(v) => {
                let names: Vec<&str> = v.members.iter().map(|m| m.name.as_str()).collect();
                println!("[{}] view {} ({:?}): {names:?}", v.group, v.view_id, v.cause)
            }
            other => println!("{other:?}"),
        }
    }
    client.close().await;
    Ok(())
}
