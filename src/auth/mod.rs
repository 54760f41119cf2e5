//! Who is calling. Every archive operation takes a [`Principal`]; today the server runs as a
//! single local institution, and the type is where tokens and client certificates will land.

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who, for the audit trail (never a patient attribute).
    pub subject: String,
    /// The institution the caller acts for; it owns what it stores.
    pub institution: String,
}

impl Principal {
    /// The caller of an archive with no authentication configured (loopback by default).
    pub fn local() -> Principal {
        Principal { subject: "local".into(), institution: "local".into() }
    }
}
