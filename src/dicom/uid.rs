//! UID syntax (PS3.5 §9.1): at most 64 characters, dot-separated numeric components,
//! no component with a leading zero unless it is the single digit "0".
//!
//! Every UID that reaches a store key, a URL or the index passes through [`validate`], so a
//! value such as `../x` or one carrying PHI-looking text can never become part of a key.

/// Why a string is not a valid UID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("uid is empty")]
    Empty,
    #[error("uid is longer than 64 characters")]
    TooLong,
    #[error("uid contains a character other than digits and dots")]
    BadCharacter,
    #[error("uid has an empty component")]
    EmptyComponent,
    #[error("uid has a component with a leading zero")]
    LeadingZero,
}

/// Checks `uid` against PS3.5 §9.1. Trailing NUL padding must already be stripped.
pub fn validate(uid: &str) -> Result<(), UidError> {
    if uid.is_empty() {
        return Err(UidError::Empty);
    }
    if uid.len() > 64 {
        return Err(UidError::TooLong);
    }
    for component in uid.split('.') {
        if component.is_empty() {
            return Err(UidError::EmptyComponent);
        }
        if !component.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UidError::BadCharacter);
        }
        if component.len() > 1 && component.starts_with('0') {
            return Err(UidError::LeadingZero);
        }
    }
    Ok(())
}

/// Strips the trailing NUL or space padding that PS3.5 allows on UI values.
pub fn trim(raw: &str) -> &str {
    raw.trim_end_matches(['\0', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_standard_uids() {
        assert_eq!(validate("1.2.840.10008.5.1.4.1.1.2"), Ok(()));
        assert_eq!(validate("0.1"), Ok(()));
    }

    #[test]
    fn rejects_malformed_uids() {
        assert_eq!(validate(""), Err(UidError::Empty));
        assert_eq!(validate("1..2"), Err(UidError::EmptyComponent));
        assert_eq!(validate("1.02"), Err(UidError::LeadingZero));
        assert_eq!(validate("../etc"), Err(UidError::EmptyComponent));
        assert_eq!(validate("1.2.a"), Err(UidError::BadCharacter));
        assert_eq!(validate(&"1".repeat(65)), Err(UidError::TooLong));
    }
}
