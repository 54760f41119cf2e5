//! The tantivy schema, generated from the attribute table in `dicom::attrs`.

use std::collections::HashMap;

use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::tokenizer::{LowerCaser, RawTokenizer, TextAnalyzer};

use crate::dicom::attrs::{ATTRIBUTES, Attribute, DATE_TIME_PAIRS, Matching};

/// Bumped whenever the schema changes; an index of another version is rebuilt from the store.
/// 4: stored result rows (`_row`), combined date-time fields (`_dt.*`, `_utc.*`).
/// 5: attributes of sequence items (`Sequence.Attribute`, `Sequence.Attribute.items`).
/// 6: the owning institution (`_owner`) and the study-qualified series key (`_series_key`), for
///    searches confined to what the caller may see.
pub const SCHEMA_VERSION: u32 = 6;
/// Tokenizer of person-name fields: the whole value, lower-cased.
pub const PN_TOKENIZER: &str = "kura_pn";

pub struct Fields {
    pub schema: Schema,
    pub key: Field,
    pub level: Field,
    pub study_uid: Field,
    pub series_uid: Field,
    pub sop_uid: Field,
    pub created: Field,
    /// The institution that owns the study.
    pub owner: Field,
    /// `{study}|{series}` on series and instance documents: a shared series is matched with
    /// its study, so that a series UID reused in another study shares nothing.
    pub series_key: Field,
    /// Keywords of table attributes that are absent or empty in the document, and
    /// `_utc.<date keyword>` when the document has no UTC date-time for that pair.
    pub empty: Field,
    /// The result row ([`super::stored`] encoding of `IndexDoc::row`).
    pub row: Field,
    /// Per date keyword of [`DATE_TIME_PAIRS`]: (date and time combined as written, the same
    /// in UTC when the entity has a TimezoneOffsetFromUTC), in microseconds (see
    /// `search::date_time`).
    date_times: HashMap<&'static str, (Field, Field)>,
    by_keyword: HashMap<&'static str, Field>,
    /// Person-name attributes: their name components, normalised for fuzzy matching.
    name_words: HashMap<&'static str, Field>,
    /// Attributes of sequence items: their values prefixed with the item's number
    /// (`search::item_term`), so that several keys can be required of one item.
    items: HashMap<&'static str, Field>,
}

impl Fields {
    pub fn build() -> Fields {
        let mut builder = Schema::builder();
        let key = builder.add_text_field("_key", STRING);
        let level = builder.add_text_field("_level", STRING);
        let study_uid = builder.add_text_field("_study", STRING | STORED);
        let series_uid = builder.add_text_field("_series", STRING | STORED);
        let sop_uid = builder.add_text_field("_sop", STRING | STORED);
        let created = builder.add_u64_field("_created", INDEXED | FAST);
        let owner = builder.add_text_field("_owner", STRING);
        let series_key = builder.add_text_field("_series_key", STRING);
        let empty = builder.add_text_field("_empty", STRING);
        let row = builder.add_bytes_field("_row", STORED);
        let pn_options = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default().set_tokenizer(PN_TOKENIZER).set_index_option(IndexRecordOption::Basic),
        );
        let mut by_keyword = HashMap::new();
        let mut name_words = HashMap::new();
        let mut items = HashMap::new();
        for attribute in ATTRIBUTES {
            if attribute.sequence.is_some() {
                items
                    .insert(attribute.keyword, builder.add_text_field(&format!("{}.items", attribute.keyword), STRING));
            }
            let field = match attribute.matching {
                Matching::Uid | Matching::Text => builder.add_text_field(attribute.keyword, STRING),
                Matching::PersonName => builder.add_text_field(attribute.keyword, pn_options.clone()),
                Matching::Date | Matching::Time => builder.add_u64_field(attribute.keyword, INDEXED | FAST),
                Matching::Number => builder.add_i64_field(attribute.keyword, INDEXED),
            };
            by_keyword.insert(attribute.keyword, field);
            if attribute.matching == Matching::PersonName {
                let words = builder.add_text_field(&format!("{}.words", attribute.keyword), STRING);
                name_words.insert(attribute.keyword, words);
            }
        }
        let mut date_times = HashMap::new();
        for (date, _) in DATE_TIME_PAIRS {
            let keyword = crate::dicom::attrs::by_tag(*date).expect("pairs are table attributes").keyword;
            let local = builder.add_u64_field(&format!("_dt.{keyword}"), INDEXED | FAST);
            let utc = builder.add_u64_field(&format!("_utc.{keyword}"), INDEXED | FAST);
            date_times.insert(keyword, (local, utc));
        }
        Fields {
            schema: builder.build(),
            key,
            level,
            study_uid,
            series_uid,
            sop_uid,
            created,
            owner,
            series_key,
            empty,
            row,
            date_times,
            by_keyword,
            name_words,
            items,
        }
    }

    /// The per-item field of an attribute of sequence items.
    pub fn items_of(&self, attribute: &Attribute) -> Option<Field> {
        self.items.get(attribute.keyword).copied()
    }

    pub fn of(&self, attribute: &Attribute) -> Field {
        self.by_keyword[attribute.keyword]
    }

    /// The (local, UTC) combined date-time fields of a pair's date attribute.
    pub fn date_time_of(&self, date: &Attribute) -> Option<(Field, Field)> {
        self.date_times.get(date.keyword).copied()
    }

    /// The fuzzy-matching field of a person-name attribute.
    pub fn words_of(&self, attribute: &Attribute) -> Option<Field> {
        self.name_words.get(attribute.keyword).copied()
    }
}

/// The `_series_key` term of a series.
pub fn series_key(study_uid: &str, series_uid: &str) -> String {
    format!("{study_uid}|{series_uid}")
}

pub fn pn_analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(RawTokenizer::default()).filter(LowerCaser).build()
}
