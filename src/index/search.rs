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
use crate::dicom::attrs::{Attribute, Level};

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
    pub offset: usize,
    pub limit: usize,
}

/// Matches in result order, and how many matched in all.
#[derive(Debug, Clone, Default)]
pub struct SearchHits {
    pub total: usize,
    pub keys: Vec<DocKey>,
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
    for filter in &query.filters {
        clauses.push((Occur::Must, criterion_query(fields, filter)?));
    }
    if clauses.is_empty() {
        return Ok(Box::new(AllQuery));
    }
    Ok(Box::new(BooleanQuery::new(clauses)))
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
            for word in name_words(value) {
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
        Criterion::Range { from, to } => {
            use std::ops::Bound::*;
            let lower = from.map_or(Unbounded, |v| Included(Term::from_field_u64(field, v)));
            let upper = to.map_or(Unbounded, |v| Included(Term::from_field_u64(field, v)));
            Box::new(RangeQuery::new(lower, upper))
        }
        Criterion::Number(value) => term_query(Term::from_field_i64(field, *value)),
    })
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
