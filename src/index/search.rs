//! Search requests in index terms, and their translation into tantivy queries
//! (PS3.4 C.2.2.2 matching: single value, UID list, wildcard, range).

use tantivy::Term;
use tantivy::query::{
    AllQuery, BooleanQuery, FuzzyTermQuery, Occur, Query, RangeQuery, RegexQuery, TermQuery, TermSetQuery,
};
use tantivy::schema::IndexRecordOption;
use unicode_normalization::UnicodeNormalization;

use super::schema::Fields;
use super::{IndexError, IndexResult};
use crate::dicom::attrs::{self, Attribute, DATE_TIME_PAIRS, Level};
use crate::model::search::*;

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
    if let Some(scope) = &query.scope {
        clauses.push((Occur::Must, scope_query(fields, scope, query.level)));
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

/// What a caller may see, as one clause: documents of its institution's studies, of studies
/// shared with it and of series shared with it (at the study level, a shared series shows its
/// study). A scope with nothing in it matches nothing.
fn scope_query(fields: &Fields, scope: &SearchScope, level: Level) -> Box<dyn Query> {
    let mut any: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if let Some(owner) = &scope.owner {
        any.push((Occur::Should, term_query(Term::from_field_text(fields.owner, owner))));
    }
    let mut studies: Vec<Term> = scope.studies.iter().map(|uid| Term::from_field_text(fields.study_uid, uid)).collect();
    if level == Level::Study {
        studies.extend(scope.series.iter().map(|(study, _)| Term::from_field_text(fields.study_uid, study)));
    } else if !scope.series.is_empty() {
        let keys = scope
            .series
            .iter()
            .map(|(study, series)| Term::from_field_text(fields.series_key, &super::schema::series_key(study, series)));
        any.push((Occur::Should, Box::new(TermSetQuery::new(keys))));
    }
    if !studies.is_empty() {
        any.push((Occur::Should, Box::new(TermSetQuery::new(studies))));
    }
    if any.is_empty() {
        // No clause at all would match everything; this term is never indexed.
        return term_query(Term::from_field_text(fields.key, ""));
    }
    Box::new(BooleanQuery::new(any))
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
