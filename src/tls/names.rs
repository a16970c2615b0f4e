//! The names a certificate is issued to: its DNS subject alternative names and its subject's
//! common name. Only ever applied to a certificate rustls has already verified.

use rustls::pki_types::CertificateDer;

/// OID 2.5.4.3 (commonName), DER-encoded with its tag and length.
const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

/// DNS SANs, then the common name (if it is not already among them); empty if the
/// certificate cannot be parsed.
pub fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok(cert) = webpki::EndEntityCert::try_from(der) else { return Vec::new() };
    let mut names: Vec<String> = cert.valid_dns_names().map(str::to_string).collect();
    if let Some(cn) = common_name(cert.subject()) {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(&cn)) {
            names.push(cn);
        }
    }
    names
}

/// The first commonName in a DER `Name` (the contents of its outer SEQUENCE): a sequence of
/// SETs of SEQUENCE { OID, string }.
fn common_name(mut name: &[u8]) -> Option<String> {
    while !name.is_empty() {
        let (tag, mut rdn, rest) = tlv(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attr, rest) = tlv(rdn)?;
            rdn = rest;
            if tag != 0x30 || !attr.starts_with(CN_OID) {
                continue;
            }
            let (tag, value, _) = tlv(&attr[CN_OID.len()..])?;
            // UTF8String, PrintableString, IA5String, T61String: all read as UTF-8 here.
            if matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                return std::str::from_utf8(value).ok().map(str::to_string);
            }
        }
    }
    None
}

/// Splits one DER tag-length-value off the front: `(tag, value, rest)`. Single-byte tags
/// and lengths of up to four bytes; anything else is `None`.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_name_is_found_among_other_attributes() {
        // SET { SEQ { OID C, PrintableString "DE" } }, SET { SEQ { OID CN, UTF8String "node1" } }
        let name = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02, b'D', b'E', //
            0x31, 0x0e, 0x30, 0x0c, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x05, b'n', b'o', b'd', b'e', b'1',
        ];
        assert_eq!(common_name(&name).as_deref(), Some("node1"));
        assert_eq!(common_name(&name[..13]), None, "no CN");
        assert_eq!(common_name(&name[..20]), None, "truncated input is no name, not a panic");
        assert_eq!(common_name(&[0x31, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
