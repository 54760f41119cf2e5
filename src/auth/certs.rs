//! Client certificates (mTLS) as principals, for gateways and modalities. rustls has verified
//! the chain against `--tls-client-ca` before anything here runs; this only maps a verified
//! certificate's names to an institution and roles, through the `--tls-client-map` file:
//!
//! ```text
//! # name                          institution   roles
//! ct-scanner-1.radiology.example  st-mary       uploader
//! Gateway St Mary                 st-mary       uploader,reader
//! ```
//!
//! One entry per line (`#` starts a comment): the last two whitespace-separated fields are the
//! institution and the roles, everything before them the name (so a subject CN may hold spaces). A certificate's names are tried in order: its subject
//! alternative names (DNS names, e-mail addresses, URIs), then its subject common names; the
//! first one the map lists decides. Names compare case-insensitively. A verified certificate
//! the map does not list authenticates nobody (as if none had been sent).

use std::collections::HashMap;
use std::path::Path;

use x509_parser::extensions::GeneralName;

use super::{Principal, Roles};

#[derive(Debug, Clone, Default)]
pub struct CertificateMap {
    entries: HashMap<String, (String, Roles)>,
}

impl CertificateMap {
    pub fn load(path: &Path) -> Result<CertificateMap, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        CertificateMap::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<CertificateMap, String> {
        let mut entries = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut fields = line.rsplitn(3, char::is_whitespace).map(str::trim).collect::<Vec<_>>();
            let malformed = || format!("line {}: expected `name institution role[,role]`", number + 1);
            if fields.len() != 3 || fields.iter().any(|f| f.is_empty()) {
                return Err(malformed());
            }
            fields.reverse();
            let roles = Roles::parse_list(fields[2]).map_err(|e| format!("line {}: {e}", number + 1))?;
            entries.insert(fields[0].to_lowercase(), (fields[1].to_string(), roles));
        }
        Ok(CertificateMap { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal a verified certificate (DER) stands for, if the map lists one of its names.
    pub fn principal(&self, certificate: &[u8]) -> Option<Principal> {
        let names = certificate_names(certificate);
        let (name, (institution, roles)) =
            names.iter().find_map(|name| self.entries.get(&name.to_lowercase()).map(|entry| (name, entry)))?;
        Some(Principal {
            subject: format!("cert:{name}"),
            institution: institution.clone(),
            roles: *roles,
            key_id: None,
            scope: super::Scope::Institution,
        })
    }
}

/// A certificate's names: subject alternative names (DNS, e-mail, URI), then subject CNs.
pub fn certificate_names(certificate: &[u8]) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => names.push(n.to_string()),
                _ => {}
            }
        }
    }
    names.extend(parsed.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string));
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn map_lines() {
        let map = CertificateMap::parse(
            "# comment\nct-1.example st-mary uploader\n\nGateway St Mary  st-mary uploader,reader # trailing\n",
        )
        .unwrap();
        let (institution, roles) = &map.entries["gateway st mary"];
        assert_eq!(institution, "st-mary");
        assert!(roles.contains(Role::Reader));
        assert!(map.entries.contains_key("ct-1.example"));
        assert!(CertificateMap::parse("only-two fields").is_err());
        assert!(CertificateMap::parse("name inst superuser").is_err());
    }
}
