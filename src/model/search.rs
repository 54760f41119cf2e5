//! What the archive searches for and finds: a query of typed criteria per attribute (PS3.4
//! C.2.2 matching, already validated against each attribute's VR) and its hits. The edge builds
//! queries from PS3.18 query parameters; an index backend answers them.

use crate::dicom::attrs::{Attribute, DATE_TIME_PAIRS, Level, Matching};
use crate::dicom::part10::AttributeValue;

/// The identity of one index document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocKey {
    pub level: Level,
    pub study_uid: String,
    pub series_uid: Option<String>,
    pub sop_uid: Option<String>,
}

impl DocKey {
    /// The unique term under which the document is replaced or deleted.
    pub fn term(&self) -> String {
        match self.level {
            Level::Study => format!("T|{}", self.study_uid),
            Level::Series => format!("S|{}|{}", self.study_uid, self.series_uid.as_deref().unwrap_or("")),
            Level::Instance => format!("I|{}", self.sop_uid.as_deref().unwrap_or("")),
        }
    }
}

/// One matching criterion on one attribute (already validated against its VR).
#[derive(Debug, Clone, PartialEq)]
pub enum Criterion {
    /// Any of these UIDs (C.2.2.2.2; comma-separated in QIDO, PS3.18 §8.3.4.1).
    UidList(Vec<String>),
    /// Case-sensitive single value, or wildcard with `*` and `?` (C.2.2.2.1, C.2.2.2.4).
    Text(String),
    /// Person name, case-insensitive, matched against the whole name and each component group.
    PersonName(String),
    /// Person name with `fuzzymatching=true`: every word of the value must match some name
    /// component by prefix or within a small edit distance, after width and kana folding.
    FuzzyPersonName(String),
    /// Inclusive range over a date (YYYYMMDD) or time (microseconds since midnight); either
    /// bound may be open (C.2.2.2.5).
    Range {
        from: Option<u64>,
        to: Option<u64>,
    },
    Number(i64),
    /// A date and a time key of one of [`DATE_TIME_PAIRS`] matched as one date-time range
    /// (PS3.4 C.2.2.2.5.1), or a date key with a TimezoneOffsetFromUTC in the query. `from` and
    /// `to` are [`date_time`] values as the query wrote them; `dates` the date key's own bounds
    /// (YYYYMMDD), for entities that have a date but no time. With `utc_offset` (microseconds,
    /// the query's TimezoneOffsetFromUTC) entities that record an offset are compared in UTC.
    DateTime {
        from: Option<u64>,
        to: Option<u64>,
        dates: (Option<u64>, Option<u64>),
        utc_offset: Option<i64>,
    },
    /// `""` with `emptyvaluematching=true`: only entities whose value is empty or absent
    /// (PS3.4 C.2.2.2.7).
    Empty,
}

#[derive(Debug, Clone)]
pub struct Filter {
    pub attribute: &'static Attribute,
    pub criterion: Criterion,
}

/// A search at one level, optionally scoped to a study or series.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub level: Level,
    pub study_uid: Option<String>,
    pub series_uid: Option<String>,
    pub filters: Vec<Filter>,
    /// Empty Value Matching (PS3.4 C.2.2.2.7): every filter also matches entities whose
    /// attribute is empty or absent.
    pub empty_value_matching: bool,
    pub offset: usize,
    pub limit: usize,
    /// What the caller may see; `None`: everything. Set by the archive from the caller's
    /// grants, never from the request, and applied inside the index query so that totals,
    /// offsets and the "more results" Warning count visible matches only.
    pub scope: Option<SearchScope>,
}

/// The studies and series a caller sees: those its institution owns, plus whole studies and
/// single series shared with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchScope {
    pub owner: Option<String>,
    pub studies: Vec<String>,
    /// (study, series) pairs: a shared series shows its study at the study level, and only
    /// itself at the series and instance levels.
    pub series: Vec<(String, String)>,
}

/// One match: its key and the values its document stores for the result row.
#[derive(Debug, Clone)]
pub struct Hit {
    pub key: DocKey,
    pub row: Vec<AttributeValue>,
}

/// Matches in result order, and how many matched in all.
#[derive(Debug, Clone, Default)]
pub struct SearchHits {
    pub total: usize,
    pub hits: Vec<Hit>,
}

pub fn has_wildcard(value: &str) -> bool {
    value.contains(['*', '?'])
}

/// Microseconds in a day.
pub const DAY_MICROS: u64 = 86_400_000_000;

/// Days from 0000-03-01 to a YYYYMMDD date (the proleptic Gregorian calendar).
fn day_number(date: u64) -> u64 {
    let (year, month, day) = ((date / 10_000) as i64, ((date / 100) % 100) as i64, (date % 100) as i64);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).max(0) as u64
}

/// A date (YYYYMMDD) and a time (microseconds since midnight) as one ordered number:
/// microseconds since 0000-03-01 00:00, so that offsets can be added across midnight.
pub fn date_time(date: u64, time: u64) -> u64 {
    day_number(date) * DAY_MICROS + time
}

/// Parses a TimezoneOffsetFromUTC value (`+HHMM` or `-HHMM`, PS3.3 C.12.1.1.8) into
/// microseconds east of UTC.
pub fn parse_utc_offset(value: &str) -> Option<i64> {
    let value = value.trim();
    let (sign, digits) = match value.as_bytes().first()? {
        b'+' => (1, &value[1..]),
        b'-' => (-1, &value[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (hours, minutes): (i64, i64) = (digits[..2].parse().ok()?, digits[2..].parse().ok()?);
    if hours > 14 || minutes > 59 {
        return None;
    }
    Some(sign * (hours * 60 + minutes) * 60_000_000)
}

/// Rewrites the date and time filters of a query for PS3.4 C.2.2.2.5.1 and a query's
/// TimezoneOffsetFromUTC (`utc_offset`, microseconds east of UTC):
/// - a date range and a time range of one of [`DATE_TIME_PAIRS`] become one date-time range,
///   e.g. 20240104-20240105 with 1100-1200 is 4 January 11:00 to 5 January 12:00;
/// - with a `utc_offset`, a date range of a pair becomes the date-time range from its first
///   day's start to its last day's end, compared in UTC where the entity records its offset;
/// - a time range on its own may not cross midnight.
///
/// Errors name the offending keyword.
pub fn combine_date_times(filters: &mut Vec<Filter>, utc_offset: Option<i64>) -> Result<(), String> {
    const LAST_MICRO: u64 = DAY_MICROS - 1;
    let range_of = |filters: &[Filter], tag| {
        filters.iter().position(|f| f.attribute.tag == tag && matches!(f.criterion, Criterion::Range { .. }))
    };
    let bounds = |filter: &Filter| match filter.criterion {
        Criterion::Range { from, to } => (from, to),
        _ => (None, None),
    };
    for (date_tag, time_tag) in DATE_TIME_PAIRS {
        let Some(date_index) = range_of(filters, *date_tag) else { continue };
        let (date_from, date_to) = bounds(&filters[date_index]);
        let (time_from, time_to) = match range_of(filters, *time_tag) {
            Some(time_index) => {
                let time = bounds(&filters[time_index]);
                filters.remove(time_index);
                time
            }
            None if utc_offset.is_some() => (None, None),
            None => continue,
        };
        let from = date_from.map(|date| date_time(date, time_from.unwrap_or(0)));
        let to = date_to.map(|date| date_time(date, time_to.unwrap_or(LAST_MICRO)));
        let date_index = range_of(filters, *date_tag).expect("still there");
        if let (Some(from), Some(to)) = (from, to)
            && from > to
        {
            return Err(format!("{} with its time is an empty range", filters[date_index].attribute.keyword));
        }
        filters[date_index].criterion = Criterion::DateTime { from, to, dates: (date_from, date_to), utc_offset };
    }
    for filter in filters.iter() {
        if let (Matching::Time, Criterion::Range { from: Some(from), to: Some(to) }) =
            (filter.attribute.matching, &filter.criterion)
            && from > to
        {
            return Err(format!("{} is a time range that crosses midnight", filter.attribute.keyword));
        }
    }
    Ok(())
}

/// Parses a DA value (YYYYMMDD; the ACR-NEMA form YYYY.MM.DD is tolerated) into YYYYMMDD.
pub fn parse_date(value: &str) -> Option<u64> {
    let digits: String = value.chars().filter(|c| *c != '.').collect();
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u64 = digits.parse().ok()?;
    let (month, day) = ((number / 100) % 100, number % 100);
    ((1..=12).contains(&month) && (1..=31).contains(&day)).then_some(number)
}

/// Parses a TM value (HH, HHMM, HHMMSS, HHMMSS.FFFFFF; the ACR-NEMA form HH:MM:SS is
/// tolerated) into microseconds since midnight. Matching is by meaning: "2230" = "223000".
pub fn parse_time(value: &str) -> Option<u64> {
    let value: String = value.trim().chars().filter(|c| *c != ':').collect();
    let (whole, fraction) = match value.split_once('.') {
        Some((whole, fraction)) => (whole.to_string(), fraction.to_string()),
        None => (value.clone(), String::new()),
    };
    if !matches!(whole.len(), 2 | 4 | 6) || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 6 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = |range: std::ops::Range<usize>| whole.get(range).map_or(Some(0), |s| s.parse::<u64>().ok());
    let (hours, minutes, seconds) = (part(0..2)?, part(2..4)?, part(4..6)?);
    if hours > 23 || minutes > 59 || seconds > 60 {
        return None;
    }
    let micros = if fraction.is_empty() { 0 } else { format!("{fraction:0<6}").parse::<u64>().ok()? };
    Some(((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + micros)
}
