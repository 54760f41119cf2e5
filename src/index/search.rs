//! Search requests in index terms, and their translation into tantivy queries
//! (PS3.4 C.2.2.2 matching: single value, UID list, wildcard, range).

use tantivy::Term;
use tantivy::query::{
    AllQuery, BooleanQuery, FuzzyTermQuery, Occur, Query, RangeQuery, RegexQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use unicode_normalization::UnicodeNormalization;

use super::schema::Fields;
use super::{DocKey, IndexError, IndexResult};
use crate::dicom::attrs::{self, Attribute, DATE_TIME_PAIRS, Level, Matching};
use crate::dicom::part10::AttributeValue;

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

pub fn level_term(level: Level) -> &'static str {
    match level {
        Level::Study => "study",
        Level::Series => "series",
        Level::Instance => "instance",
    }
}

/// Escapes regex syntax and turns DICOM wildcards into regex (`*` → `.*`, `?` → `.`).
pub fn wildcard_to_regex(pattern: &str) -> String {
    let mut regex = String::with_capacity(pattern.len() * 2);
    for c in pattern.chars() {
        match c {
            '*' => regex.push_str(".*"),
            '?' => regex.push('.'),
            c if "\\.+()|[]{}^$#&-~\"@<>".contains(c) => {
                regex.push('\\');
                regex.push(c);
            }
            c => regex.push(c),
        }
    }
    regex
}

pub fn has_wildcard(value: &str) -> bool {
    value.contains(['*', '?'])
}

/// Normalises a person name for indexing and matching: lower case, trailing empty components
/// and groups dropped.
pub fn normalise_person_name(name: &str) -> String {
    name.to_lowercase().trim_end_matches(['^', '=', ' ']).to_string()
}

/// Folds a name component for fuzzy matching: NFKC (half-width katakana and full-width Latin
/// become their ordinary forms), lower case, katakana to hiragana.
pub fn fold_name(text: &str) -> String {
    text.nfkc()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            '\u{30A1}'..='\u{30F6}' => char::from_u32(c as u32 - 0x60).unwrap_or(c),
            c => c,
        })
        .collect()
}

/// The folded words of a person name: its components across all component groups.
pub fn name_words(name: &str) -> Vec<String> {
    name.split(['=', '^', ' ', ',']).filter(|w| !w.is_empty()).map(fold_name).collect()
}

/// Most words a fuzzy person-name value may have: each becomes a Levenshtein automaton and a
/// prefix regex, whose cost grows with the word's length; names have a handful of words.
pub const MAX_FUZZY_WORDS: usize = 8;
/// Longest word (in characters) of a fuzzy person-name value.
pub const MAX_FUZZY_WORD_CHARS: usize = 64;

/// Edits allowed for a fuzzy word: none for short words, then one, then two.
fn edit_distance(word: &str) -> u8 {
    match word.chars().count() {
        0..=3 => 0,
        4..=7 => 1,
        _ => 2,
    }
}

fn term_query(term: Term) -> Box<dyn Query> {
    Box::new(TermQuery::new(term, IndexRecordOption::Basic))
}

pub(super) fn build_query(fields: &Fields, query: &SearchQuery) -> IndexResult<Box<dyn Query>> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> =
        vec![(Occur::Must, term_query(Term::from_field_text(fields.level, level_term(query.level))))];
    if let Some(study) = &query.study_uid {
        clauses.push((Occur::Must, term_query(Term::from_field_text(fields.study_uid, study))));
    }
    if let Some(series) = &query.series_uid {
        clauses.push((Occur::Must, term_query(Term::from_field_text(fields.series_uid, series))));
    }
    let with_empty = |clause: Box<dyn Query>, filter: &Filter| -> Box<dyn Query> {
        if query.empty_value_matching && filter.criterion != Criterion::Empty {
            let empty = term_query(Term::from_field_text(fields.empty, filter.attribute.keyword));
            Box::new(BooleanQuery::new(vec![(Occur::Should, clause), (Occur::Should, empty)]))
        } else {
            clause
        }
    };
    let mut sequences_done = Vec::new();
    for filter in &query.filters {
        // Several keys on one sequence must match in one item (PS3.4 C.2.2.2.6).
        if let Some(sequence) = filter.attribute.sequence {
            let keys: Vec<&Filter> = query.filters.iter().filter(|f| f.attribute.sequence == Some(sequence)).collect();
            if keys.len() > 1 {
                if !sequences_done.contains(&sequence) {
                    sequences_done.push(sequence);
                    let mut any_item: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                    for index in 0..MAX_ITEMS {
                        let mut all_keys: Vec<(Occur, Box<dyn Query>)> = Vec::new();
                        for key in &keys {
                            all_keys.push((Occur::Must, with_empty(item_query(fields, key, index)?, key)));
                        }
                        any_item.push((Occur::Should, Box::new(BooleanQuery::new(all_keys))));
                    }
                    clauses.push((Occur::Must, Box::new(BooleanQuery::new(any_item))));
                }
                continue;
            }
        }
        let clause = criterion_query(fields, filter)?;
        clauses.push((Occur::Must, with_empty(clause, filter)));
    }
    if clauses.is_empty() {
        return Ok(Box::new(AllQuery));
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
}

/// Items of a sequence whose attributes the index can require together (PS3.4 C.2.2.2.6);
/// later items are matched key by key only.
pub const MAX_ITEMS: usize = 16;

/// The per-item term of an item attribute's value: the item's number, `:`, the value.
pub fn item_term(index: usize, value: &str) -> String {
    format!("{index}:{value}")
}

/// A key on an attribute of sequence items, against item number `index` only.
fn item_query(fields: &Fields, filter: &Filter, index: usize) -> IndexResult<Box<dyn Query>> {
    let invalid = |e: tantivy::TantivyError| IndexError::InvalidQuery(e.to_string());
    let field = fields
        .items_of(filter.attribute)
        .ok_or_else(|| IndexError::InvalidQuery(format!("{} is not in a sequence", filter.attribute.keyword)))?;
    Ok(match &filter.criterion {
        Criterion::UidList(uids) => {
            Box::new(TermSetQuery::new(uids.iter().map(|uid| Term::from_field_text(field, &item_term(index, uid)))))
        }
        Criterion::Text(value) if has_wildcard(value) => {
            let pattern = format!("{index}:{}", wildcard_to_regex(value));
            Box::new(RegexQuery::from_pattern(&pattern, field).map_err(invalid)?)
        }
        Criterion::Text(value) => term_query(Term::from_field_text(field, &item_term(index, value))),
        // `""`: the entity has no value of the attribute in any item.
        Criterion::Empty => term_query(Term::from_field_text(fields.empty, filter.attribute.keyword)),
        _ => return Err(IndexError::InvalidQuery(format!("{} takes text or UIDs", filter.attribute.keyword))),
    })
}

fn criterion_query(fields: &Fields, filter: &Filter) -> IndexResult<Box<dyn Query>> {
    let field = fields.of(filter.attribute);
    let invalid = |e: tantivy::TantivyError| IndexError::InvalidQuery(e.to_string());
    Ok(match &filter.criterion {
        Criterion::UidList(uids) => {
            Box::new(TermSetQuery::new(uids.iter().map(|uid| Term::from_field_text(field, uid))))
        }
        Criterion::Text(value) if has_wildcard(value) => {
            Box::new(RegexQuery::from_pattern(&wildcard_to_regex(value), field).map_err(invalid)?)
        }
        Criterion::Text(value) => term_query(Term::from_field_text(field, value)),
        Criterion::PersonName(value) => {
            let value = normalise_person_name(value);
            if has_wildcard(&value) {
                Box::new(RegexQuery::from_pattern(&wildcard_to_regex(&value), field).map_err(invalid)?)
            } else {
                term_query(Term::from_field_text(field, &value))
            }
        }
        Criterion::FuzzyPersonName(value) => {
            let words_field = fields.words_of(filter.attribute).ok_or_else(|| {
                IndexError::InvalidQuery(format!("{} has no fuzzy matching", filter.attribute.keyword))
            })?;
            let mut words: Vec<(Occur, Box<dyn Query>)> = Vec::new();
            let value_words = name_words(value);
            // Checked before any automaton is built.
            if value_words.len() > MAX_FUZZY_WORDS {
                return Err(IndexError::InvalidQuery(format!(
                    "{} with fuzzymatching takes at most {MAX_FUZZY_WORDS} words",
                    filter.attribute.keyword
                )));
            }
            if value_words.iter().any(|w| w.chars().count() > MAX_FUZZY_WORD_CHARS) {
                return Err(IndexError::InvalidQuery(format!(
                    "{} with fuzzymatching takes words of at most {MAX_FUZZY_WORD_CHARS} characters",
                    filter.attribute.keyword
                )));
            }
            for word in value_words {
                let word = word.replace(['*', '?'], "");
                if word.is_empty() {
                    continue;
                }
                let prefix = RegexQuery::from_pattern(&format!("{}.*", wildcard_to_regex(&word)), words_field)
                    .map_err(invalid)?;
                let term = Term::from_field_text(words_field, &word);
                let either: Vec<(Occur, Box<dyn Query>)> = vec![
                    (Occur::Should, Box::new(prefix)),
                    (Occur::Should, Box::new(FuzzyTermQuery::new(term, edit_distance(&word), true))),
                ];
                words.push((Occur::Must, Box::new(BooleanQuery::new(either))));
            }
            if words.is_empty() {
                return Ok(Box::new(AllQuery));
            }
            Box::new(BooleanQuery::new(words))
        }
        Criterion::Range { from, to } => u64_range(field, *from, *to),
        Criterion::Number(value) => term_query(Term::from_field_i64(field, *value)),
        Criterion::Empty => term_query(Term::from_field_text(fields.empty, filter.attribute.keyword)),
        Criterion::DateTime { from, to, dates, utc_offset } => {
            let missing = || IndexError::InvalidQuery(format!("{} has no time to combine", filter.attribute.keyword));
            let (local_field, utc_field) = fields.date_time_of(filter.attribute).ok_or_else(missing)?;
            let time = DATE_TIME_PAIRS
                .iter()
                .find(|(date, _)| *date == filter.attribute.tag)
                .and_then(|(_, time)| attrs::by_tag(*time))
                .ok_or_else(missing)?;
            // An entity with a date but no time matches by its date alone.
            let date_only: Box<dyn Query> = Box::new(BooleanQuery::new(vec![
                (Occur::Must, term_query(Term::from_field_text(fields.empty, time.keyword))),
                (Occur::Must, u64_range(field, dates.0, dates.1)),
            ]));
            let local: Box<dyn Query> = Box::new(BooleanQuery::new(vec![
                (Occur::Should, u64_range(local_field, *from, *to)),
                (Occur::Should, date_only),
            ]));
            match utc_offset {
                None => local,
                Some(offset) => {
                    let shift = |value: u64| value.saturating_add_signed(-offset);
                    let no_utc = term_query(Term::from_field_text(fields.empty, &utc_marker(filter.attribute)));
                    Box::new(BooleanQuery::new(vec![
                        (Occur::Should, u64_range(utc_field, from.map(shift), to.map(shift))),
                        (Occur::Should, Box::new(BooleanQuery::new(vec![(Occur::Must, no_utc), (Occur::Must, local)]))),
                    ]))
                }
            }
        }
    })
}

fn u64_range(field: tantivy::schema::Field, from: Option<u64>, to: Option<u64>) -> Box<dyn Query> {
    use std::ops::Bound::*;
    let lower = from.map_or(Unbounded, |v| Included(Term::from_field_u64(field, v)));
    let upper = to.map_or(Unbounded, |v| Included(Term::from_field_u64(field, v)));
    Box::new(RangeQuery::new(lower, upper))
}

/// The `_empty` entry of a document that has no UTC date-time for the pair of `date`.
pub fn utc_marker(date: &Attribute) -> String {
    format!("_utc.{}", date.keyword)
}

const DAY_MICROS: u64 = 86_400_000_000;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_become_anchored_regex_pieces() {
        assert_eq!(wildcard_to_regex("Smi*"), "Smi.*");
        assert_eq!(wildcard_to_regex("a?c"), "a.c");
        assert_eq!(wildcard_to_regex("doe^j*"), "doe\\^j.*");
        assert_eq!(wildcard_to_regex("1.2"), "1\\.2");
    }

    #[test]
    fn name_words_fold_width_case_and_kana() {
        assert_eq!(
            name_words("Yamada^Tarou=山田^太郎=ﾔﾏﾀﾞ^ﾀﾛｳ"),
            ["yamada", "tarou", "山田", "太郎", "やまだ", "たろう"]
        );
        assert_eq!(fold_name("ＹＡＭＡＤＡ"), "yamada");
        assert_eq!(fold_name("ヤマダ"), "やまだ");
    }

    #[test]
    fn date_times_order_across_days_and_offsets() {
        let day = date_time(20200102, 0) - date_time(20200101, 0);
        assert_eq!(day, DAY_MICROS);
        assert_eq!(date_time(20200301, 0) - date_time(20200228, 0), 2 * DAY_MICROS, "2020 is a leap year");
        assert_eq!(date_time(20210101, 0) - date_time(20201231, 0), DAY_MICROS);
        assert_eq!(parse_utc_offset("+0100"), Some(3_600_000_000));
        assert_eq!(parse_utc_offset("-0530"), Some(-19_800_000_000));
        assert_eq!(parse_utc_offset("0100"), None);
        assert_eq!(parse_utc_offset("+2500"), None);
    }

    #[test]
    fn dates_and_times_parse_by_meaning() {
        assert_eq!(parse_date("20240131"), Some(20240131));
        assert_eq!(parse_date("2024.01.31"), Some(20240131));
        assert_eq!(parse_date("20241301"), None);
        assert_eq!(parse_time("2230"), parse_time("223000"));
        assert_eq!(parse_time("10"), Some(10 * 3600 * 1_000_000));
        assert_eq!(parse_time("101010.5"), Some((10 * 3600 + 10 * 60 + 10) * 1_000_000 + 500_000));
        assert_eq!(parse_time("25"), None);
    }
}
