//! What a principal may see: its institution's studies, plus the studies and series shared
//! with its institution or with it (a share link's caller: only what that link shares). The
//! archive works the grants out once per call, from the share store (no cache: a revocation
//! holds for the next request), and applies them in the index query and to every record it
//! hands out. Something not visible is reported exactly like something that does not exist.

use std::collections::BTreeSet;

use super::shares::{Grant, ShareStore};
use crate::auth::{Principal, Scope};
use crate::error::Error;
use crate::index::SearchScope;

/// The studies and series a principal sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grants {
    /// Everything (the local principal of an archive without authentication).
    All,
    Scoped {
        /// The institution whose studies it owns (none for a share link).
        institution: Option<String>,
        /// Studies shared whole.
        studies: BTreeSet<String>,
        /// (study, series) shared on their own.
        series: BTreeSet<(String, String)>,
    },
}

impl Grants {
    pub fn of(principal: &Principal, shares: &ShareStore) -> Result<Grants, Error> {
        let (institution, grants) = match &principal.scope {
            Scope::Deployment => return Ok(Grants::All),
            Scope::Link(id) => (None, shares.link_grant(id)?.into_iter().collect()),
            Scope::Institution => {
                (Some(principal.institution.clone()), shares.grants_to(&principal.institution, &principal.subject)?)
            }
        };
        let (mut studies, mut series) = (BTreeSet::new(), BTreeSet::new());
        for Grant { study_uid, series_uid } in grants {
            match series_uid {
                Some(series_uid) => series.insert((study_uid, series_uid)),
                None => studies.insert(study_uid),
            };
        }
        Ok(Grants::Scoped { institution, studies, series })
    }

    /// Whether the principal acts for the owner of a study (to store into it, delete from it,
    /// share it). Shares never make a principal an owner.
    pub fn owns(&self, owner: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Scoped { institution, .. } => institution.as_deref() == Some(owner),
        }
    }

    /// Whether the whole study is visible.
    pub fn whole_study(&self, owner: &str, study_uid: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Scoped { studies, .. } => self.owns(owner) || studies.contains(study_uid),
        }
    }

    /// Whether the study is visible at all (whole, or through a shared series).
    pub fn study(&self, owner: &str, study_uid: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Scoped { series, .. } => {
                self.whole_study(owner, study_uid) || series.iter().any(|(study, _)| study == study_uid)
            }
        }
    }

    /// Whether the series (and its instances) is visible.
    pub fn series(&self, owner: &str, study_uid: &str, series_uid: &str) -> bool {
        match self {
            Grants::All => true,
            Grants::Scoped { series, .. } => {
                self.whole_study(owner, study_uid)
                    || series.iter().any(|(study, one)| study == study_uid && one == series_uid)
            }
        }
    }

    /// The same, for the index query; `None`: no restriction.
    pub fn search_scope(&self) -> Option<SearchScope> {
        match self {
            Grants::All => None,
            Grants::Scoped { institution, studies, series } => Some(SearchScope {
                owner: institution.clone(),
                studies: studies.iter().cloned().collect(),
                series: series.iter().cloned().collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_whole_study_and_series_grants() {
        let grants = Grants::Scoped {
            institution: Some("b".into()),
            studies: ["1.1".to_string()].into(),
            series: [("1.2".to_string(), "1.2.1".to_string())].into(),
        };
        assert!(grants.owns("b") && !grants.owns("a"));
        assert!(grants.study("b", "9.9"), "its own");
        assert!(grants.study("a", "1.1") && grants.series("a", "1.1", "1.1.7"), "a shared study, every series");
        assert!(grants.study("a", "1.2") && !grants.whole_study("a", "1.2"), "a shared series shows its study");
        assert!(grants.series("a", "1.2", "1.2.1") && !grants.series("a", "1.2", "1.2.2"));
        assert!(!grants.series("a", "1.3", "1.2.1"), "a series is shared within its study only");
        assert!(!grants.study("a", "1.3"));
        let link = Grants::Scoped { institution: None, studies: Default::default(), series: Default::default() };
        assert!(!link.owns("") && !link.study("", "1.1"));
        assert!(Grants::All.owns("a") && Grants::All.search_scope().is_none());
    }
}
