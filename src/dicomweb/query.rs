//! QIDO-RS query parameters (PS3.18 §8.3.4, Table 8.3.4-1) into a [`SearchQuery`] plus the
//! set of attributes to return.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::{StandardDataDictionary, tags};

use crate::dicom::attrs::{self, Attribute, Level, Matching};
use crate::dicom::uid;
use crate::error::Error;
use crate::model::search::{
    Criterion, Filter, SearchQuery, combine_date_times, has_wildcard, parse_date, parse_time, parse_utc_offset,
};

pub use crate::media::mime::APPLICATION_DICOM_JSON;

/// Which attributes a search returns beyond the defaults.
#[derive(Debug, Clone, Default)]
pub enum IncludeFields {
    #[default]
    Defaults,
    All,
    /// Top-level attributes (a sequence stands for all its item attributes), and the dotted
    /// paths of item attributes (their table keywords).
    These(Vec<Tag>, Vec<&'static str>),
}

impl IncludeFields {
    pub fn includes(&self, attribute: &Attribute) -> bool {
        match (self, attribute.sequence) {
            (IncludeFields::Defaults, _) => false,
            (IncludeFields::All, _) => true,
            (IncludeFields::These(tags, _), None) => tags.contains(&attribute.tag),
            (IncludeFields::These(tags, paths), Some(sequence)) => {
                tags.contains(&sequence) || paths.contains(&attribute.keyword)
            }
        }
    }
}

/// A parsed QIDO-RS request.
#[derive(Debug, Clone)]
pub struct Search {
    pub query: SearchQuery,
    pub include: IncludeFields,
    /// Attributes named by a match key: returned whatever their return rule (§10.6.3.3).
    pub matched: Vec<&'static Attribute>,
    /// `fuzzymatching=true` was asked for.
    pub fuzzy_requested: bool,
    /// `emptyvaluematching=true` was asked for (PS3.18 §8.3.4.5).
    pub empty_value_matching_requested: bool,
    /// Parameters that are valid DICOM attributes but not supported as match keys; ignored
    /// as §8.3 requires, and named in a Warning.
    pub ignored: Vec<String>,
    /// Parameters that name no DICOM attribute or path and no QIDO-RS parameter (a browser's
    /// cache-busting `_=…`, a misspelt keyword): ignored as §8.3 requires ("as if they were
    /// absent"), and named in a Warning.
    pub unsupported: Vec<String>,
}

impl Search {
    /// Whether the request named `attribute` by a match key or `includefield`.
    pub fn named(&self, attribute: &Attribute) -> bool {
        self.matched.iter().any(|m| m.keyword == attribute.keyword) || self.include.includes(attribute)
    }
}

/// Decodes one query component: `%XX` as UTF-8 bytes and `+` as space (as HTML forms and
/// Python's urlencode send it; a literal `+` arrives as `%2B`).
fn decode(component: &str) -> Result<String, Error> {
    let replaced = component.replace('+', " ");
    percent_encoding::percent_decode_str(&replaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| Error::bad_request("query parameter is not valid percent-encoded UTF-8"))
}

/// Splits a raw query string into decoded (name, value) pairs.
pub fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for piece in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        out.push((decode(name)?, decode(value)?));
    }
    Ok(out)
}

fn unsigned(name: &str, value: &str) -> Result<usize, Error> {
    value.parse::<usize>().map_err(|_| Error::bad_request(format!("{name}={value:?} is not an unsigned integer")))
}

/// Resolves a keyword or tag that names a DICOM attribute at all (for 400 vs. ignore).
pub(crate) fn dictionary_tag(name: &str) -> Option<Tag> {
    if let Some(tag) = attrs::hex_tag(name) {
        return Some(tag);
    }
    StandardDataDictionary.by_name(name).map(|entry| entry.tag.inner())
}

/// Whether the dictionary declares `tag` a sequence (SQ).
pub(crate) fn is_sequence(tag: Tag) -> bool {
    StandardDataDictionary.by_tag(tag).is_some_and(|entry| entry.vr() == VirtualVr::Exact(VR::SQ))
}

/// Whether `name` is a valid attribute path of PS3.18 §8.3.1: keywords or tags separated by
/// dots, every one but the last a sequence (SQ), the last not one.
fn dictionary_path(name: &str) -> bool {
    let components: Vec<&str> = name.split('.').collect();
    components.iter().enumerate().all(|(index, component)| match dictionary_tag(component) {
        Some(tag) => is_sequence(tag) == (index + 1 < components.len()),
        None => false,
    })
}

/// A DA or TM value or range. A time range whose start is after its end is left for
/// [`combine_date_times`] to judge: with a date range it is a range across midnight.
fn range<F: Fn(&str) -> Option<u64>>(name: &str, value: &str, parse: F, is_time: bool) -> Result<Criterion, Error> {
    let invalid = || Error::bad_request(format!("{name}={value:?} is not a valid value or range (PS3.4 C.2.2.2.5)"));
    let bound = |text: &str| -> Result<Option<u64>, Error> {
        if text.is_empty() { Ok(None) } else { parse(text).map(Some).ok_or_else(invalid) }
    };
    let (from, to) = match value.split_once('-') {
        Some((from, to)) => (bound(from)?, bound(to)?),
        None => {
            let single = bound(value)?;
            (single, single)
        }
    };
    if from.is_none() && to.is_none() {
        return Err(invalid());
    }
    if let (Some(from), Some(to)) = (from, to)
        && from > to
        && !is_time
    {
        return Err(invalid());
    }
    Ok(Criterion::Range { from, to })
}

fn criterion(attribute: &Attribute, name: &str, value: &str) -> Result<Option<Criterion>, Error> {
    // An empty value, or `*` alone, is universal matching: return only (C.2.2.2.3).
    if value.is_empty() || value == "*" {
        return Ok(None);
    }
    let criterion = match attribute.matching {
        Matching::Uid => {
            // PS3.18 §8.3.4.1 separates the UIDs of a list with commas; PS3.4 C.2.2.2.2 (the
            // DIMSE form, which clients built on it send) with backslashes. Neither character
            // can occur in a UID, so both are accepted.
            let uids: Vec<String> = value.split([',', '\\']).map(str::to_string).collect();
            for uid in &uids {
                uid::validate(uid)
                    .map_err(|e| Error::bad_request(format!("{name}: {uid:?} is not a valid UID: {e}")))?;
            }
            Criterion::UidList(uids)
        }
        Matching::Text => Criterion::Text(value.to_string()),
        Matching::PersonName => Criterion::PersonName(value.to_string()),
        Matching::Date => range(name, value, parse_date, false)?,
        Matching::Time => range(name, value, parse_time, true)?,
        Matching::Number => {
            if has_wildcard(value) {
                return Err(Error::bad_request(format!("{name}: wildcards are not allowed for numbers")));
            }
            Criterion::Number(
                value.trim().parse().map_err(|_| Error::bad_request(format!("{name}={value:?} is not a number")))?,
            )
        }
    };
    Ok(Some(criterion))
}

/// Parses the query of a search at `level` over the given resource levels.
pub fn parse(raw_query: Option<&str>, level: Level, levels: &[Level], max_results: usize) -> Result<Search, Error> {
    let mut search = Search {
        query: SearchQuery {
            level,
            study_uid: None,
            series_uid: None,
            filters: Vec::new(),
            empty_value_matching: false,
            offset: 0,
            limit: max_results,
            scope: None,
        },
        include: IncludeFields::Defaults,
        matched: Vec::new(),
        fuzzy_requested: false,
        empty_value_matching_requested: false,
        ignored: Vec::new(),
        unsupported: Vec::new(),
    };
    let mut seen = Vec::new();
    // TimezoneOffsetFromUTC in the query (µs east of UTC): the zone of its dates and times.
    let mut utc_offset = None;
    let mut empty_keys = Vec::new();
    for (name, value) in pairs(raw_query)? {
        match name.as_str() {
            "limit" => search.query.limit = unsigned("limit", &value)?.min(max_results),
            "offset" => search.query.offset = unsigned("offset", &value)?,
            "fuzzymatching" => {
                search.fuzzy_requested = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(Error::bad_request("fuzzymatching must be true or false")),
                }
            }
            "includefield" => {
                for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    if item == "all" {
                        search.include = IncludeFields::All;
                        continue;
                    }
                    // A path outside the table is accepted and not returned, as other
                    // attributes outside it are.
                    let (tag, path) = if item.contains('.') {
                        match attrs::lookup(item) {
                            Some(attribute) => (None, Some(attribute.keyword)),
                            None if dictionary_path(item) => (None, None),
                            None => {
                                return Err(Error::bad_request(format!(
                                    "includefield: {item:?} is not a DICOM attribute path"
                                )));
                            }
                        }
                    } else {
                        let tag = dictionary_tag(item).ok_or_else(|| {
                            Error::bad_request(format!("includefield: {item:?} is not a DICOM attribute"))
                        })?;
                        (Some(tag), None)
                    };
                    if let IncludeFields::Defaults = search.include {
                        search.include = IncludeFields::These(Vec::new(), Vec::new());
                    }
                    if let IncludeFields::These(tags, paths) = &mut search.include {
                        tags.extend(tag);
                        paths.extend(path);
                    }
                }
            }
            "emptyvaluematching" => {
                search.empty_value_matching_requested = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(Error::bad_request("emptyvaluematching must be true or false")),
                }
            }
            // Parameters of the HTTP layer, not match keys.
            "accept" | "charset" => {}
            _ => {
                let attribute = match attrs::lookup(&name) {
                    Some(attribute) => attribute,
                    // A sequence is matched through its item attributes (§8.3.1); empty, it asks
                    // for the sequence to be returned (C.2.2.2.6).
                    None if dictionary_tag(&name).is_some_and(is_sequence) => {
                        if !value.is_empty() {
                            return Err(Error::bad_request(format!(
                                "{name} is a sequence: match its attributes as {name}.<attribute> (PS3.18 §8.3.1)"
                            )));
                        }
                        let tag = dictionary_tag(&name).expect("resolved above");
                        if !attrs::ATTRIBUTES.iter().any(|a| a.sequence == Some(tag)) {
                            search.ignored.push(name.clone());
                        }
                        match &mut search.include {
                            IncludeFields::All => {}
                            IncludeFields::These(tags, _) => tags.push(tag),
                            include => *include = IncludeFields::These(vec![tag], Vec::new()),
                        }
                        continue;
                    }
                    None if dictionary_tag(&name).is_some() || (name.contains('.') && dictionary_path(&name)) => {
                        search.ignored.push(name.clone());
                        continue;
                    }
                    None => {
                        if !search.unsupported.contains(&name) {
                            search.unsupported.push(name.clone());
                        }
                        continue;
                    }
                };
                if seen.contains(&attribute.keyword) {
                    return Err(Error::bad_request(format!("{name} appears more than once (PS3.18 §8.3.4.1)")));
                }
                seen.push(attribute.keyword);
                // Modality on /studies means "a series of this modality": ModalitiesInStudy.
                let attribute = if attribute.tag == tags::MODALITY && level == Level::Study {
                    attrs::by_tag(tags::MODALITIES_IN_STUDY).expect("in table")
                } else {
                    attribute
                };
                if !levels.contains(&attribute.level) {
                    return Err(Error::bad_request(format!(
                        "{name} is a {}-level attribute and cannot be matched by this resource",
                        crate::archive::level_name(attribute.level)
                    )));
                }
                search.matched.push(attribute);
                // PS3.18 §8.3.4.1.1, PS3.4 C.2.2.2.1.3: not a match key, but the time zone in
                // which the query's dates and times are meant.
                if attribute.tag == tags::TIMEZONE_OFFSET_FROM_UTC {
                    if !value.is_empty() {
                        utc_offset = Some(parse_utc_offset(&value).ok_or_else(|| {
                            Error::bad_request(format!("{name}={value:?} is not an offset like +0100 or -0500"))
                        })?);
                    }
                    continue;
                }
                // `""` asks for entities whose value is empty (PS3.4 C.2.2.2.7); judged below,
                // once emptyvaluematching is known.
                if value == "\"\"" {
                    empty_keys.push((attribute, name.clone()));
                    continue;
                }
                if let Some(criterion) = criterion(attribute, &name, &value)? {
                    search.query.filters.push(Filter { attribute, criterion });
                }
            }
        }
    }
    search.query.empty_value_matching = search.empty_value_matching_requested;
    for (attribute, name) in empty_keys {
        let criterion = if search.empty_value_matching_requested {
            Criterion::Empty
        } else {
            // Without Empty Value Matching `""` is an ordinary value.
            match criterion(attribute, &name, "\"\"")? {
                Some(criterion) => criterion,
                None => continue,
            }
        };
        search.query.filters.push(Filter { attribute, criterion });
    }
    combine_date_times(&mut search.query.filters, utc_offset)
        .map_err(|message| Error::bad_request(format!("{message} (PS3.4 C.2.2.2.5)")))?;
    // fuzzymatching applies to person names (PS3.4 C.2.2.2.1.1), wherever it appeared.
    if search.fuzzy_requested {
        for filter in &mut search.query.filters {
            if let Criterion::PersonName(value) = &filter.criterion {
                filter.criterion = Criterion::FuzzyPersonName(value.clone());
            }
        }
    }
    Ok(search)
}
