//! Percent-decoding for the places where clients send URL-encoded text (SAS tokens, MQTT
//! topic query values).

/// Decodes `%XX` escapes (either hex case); every other byte, `+` included, stands for
/// itself. `None` on a truncated or non-hex escape.
pub fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let high = bytes.next().and_then(hex_value)?;
            let low = bytes.next().and_then(hex_value)?;
            out.push((high << 4) | low);
        } else {
            out.push(b);
        }
    }
    Some(out)
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_either_case_and_keeps_plus() {
        assert_eq!(
            percent_decode("a%2Fb%2fc+d").as_deref(),
            Some(&b"a/b/c+d"[..])
        );
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%+f"), None);
        assert_eq!(percent_decode("%zz"), None);
    }
}
