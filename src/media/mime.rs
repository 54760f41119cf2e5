//! Media types (RFC 6838 syntax, PS3.18 §8.7): parsing with parameters, and the constants
//! DICOMweb uses.

pub const APPLICATION_DICOM: &str = "application/dicom";
pub const APPLICATION_DICOM_JSON: &str = "application/dicom+json";
pub const APPLICATION_DICOM_XML: &str = "application/dicom+xml";
pub const APPLICATION_JSON: &str = "application/json";
pub const MULTIPART_RELATED: &str = "multipart/related";
pub const APPLICATION_ZIP: &str = "application/zip";

/// A parsed media type: lower-case essence and its parameters (names lower-case, values with
/// quotes removed).
#[derive(Debug, Clone, PartialEq)]
pub struct MediaType {
    pub essence: String,
    pub params: Vec<(String, String)>,
}

impl MediaType {
    /// Parses `type/subtype *(; name=value)`. Quoted values may contain `;` and `,`.
    pub fn parse(text: &str) -> Option<MediaType> {
        let mut pieces = split_outside_quotes(text, ';').into_iter();
        let essence = pieces.next()?.trim().to_ascii_lowercase();
        let (kind, subtype) = essence.split_once('/')?;
        if kind.is_empty() || subtype.is_empty() || essence.contains(char::is_whitespace) {
            return None;
        }
        let mut params = Vec::new();
        for piece in pieces {
            let piece = piece.trim();
            if piece.is_empty() {
                continue;
            }
            let (name, value) = piece.split_once('=')?;
            let value = value.trim();
            let value = if value.len() >= 2 && value.starts_with('"') && value.ends_with('"') {
                value[1..value.len() - 1].replace("\\\"", "\"")
            } else {
                value.to_string()
            };
            params.push((name.trim().to_ascii_lowercase(), value));
        }
        Some(MediaType { essence, params })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn is(&self, essence: &str) -> bool {
        self.essence == essence
    }
}

impl std::fmt::Display for MediaType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.essence)?;
        for (name, value) in &self.params {
            let plain = !value.is_empty()
                && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if plain {
                write!(f, "; {name}={value}")?;
            } else {
                write!(f, "; {name}=\"{}\"", value.replace('"', "\\\""))?;
            }
        }
        Ok(())
    }
}

/// Splits on `separator` where it is not inside a quoted string.
pub fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                out.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multipart_related_with_quoted_type() {
        let m = MediaType::parse(r#"Multipart/Related; type="application/dicom"; boundary="a;b""#).unwrap();
        assert!(m.is(MULTIPART_RELATED));
        assert_eq!(m.param("type"), Some("application/dicom"));
        assert_eq!(m.param("boundary"), Some("a;b"));
    }

    #[test]
    fn writes_what_it_parses() {
        let text = r#"multipart/related; type="application/dicom"; transfer-syntax=*"#;
        let m = MediaType::parse(text).unwrap();
        assert_eq!(m.to_string(), "multipart/related; type=\"application/dicom\"; transfer-syntax=*");
        assert_eq!(MediaType::parse(&m.to_string()), Some(m));
    }

    #[test]
    fn rejects_garbage() {
        assert!(MediaType::parse("nonsense").is_none());
        assert!(MediaType::parse("a/b; novalue").is_none());
    }
}
