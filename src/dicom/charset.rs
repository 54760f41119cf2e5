//! Decoding text under ISO 2022 code extensions (PS3.5 §6.1.2.5), which dicom-rs 0.10 does not
//! do when Specific Character Set (0008,0005) has several values: Japanese (ISO 2022 IR 6, 13,
//! 87, 159), Korean (IR 149), simplified Chinese (IR 58) and the single-byte ISO 8859 sets.
//!
//! The code state starts from the first value of (0008,0005) and returns to it at the start of
//! every value and after every delimiter (`\`, CR, LF, TAB, FF, and for person names `^` and
//! `=`), as PS3.5 §6.1.2.5.3 requires encoders to switch back before them.

use encoding_rs::Encoding;

/// A graphic character set that can be designated to G0 or G1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Ascii,
    /// JIS X 0201 Romaji (ISO-IR 14), G0.
    JisRoman,
    /// JIS X 0201 Katakana (ISO-IR 13), G1.
    JisKatakana,
    /// JIS X 0208 (ISO-IR 87), two bytes, G0.
    Jis0208,
    /// JIS X 0212 (ISO-IR 159), two bytes, G0.
    Jis0212,
    /// KS X 1001 (ISO-IR 149), two bytes, G1.
    Ksx1001,
    /// GB 2312 (ISO-IR 58), two bytes, G1.
    Gb2312,
    /// An ISO 8859 upper half, G1.
    Single(&'static Encoding),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    g0: Set,
    g1: Option<Set>,
}

/// The state a Defined Term of (0008,0005) designates.
fn initial_state(term: &str) -> State {
    let term = term.trim();
    let g1 = |set| State { g0: Set::Ascii, g1: Some(set) };
    match term.rsplit(' ').next().unwrap_or("") {
        "13" => State { g0: Set::JisRoman, g1: Some(Set::JisKatakana) },
        "100" => g1(Set::Single(encoding_rs::WINDOWS_1252)),
        "101" => g1(Set::Single(encoding_rs::ISO_8859_2)),
        "109" => g1(Set::Single(encoding_rs::ISO_8859_3)),
        "110" => g1(Set::Single(encoding_rs::ISO_8859_4)),
        "144" => g1(Set::Single(encoding_rs::ISO_8859_5)),
        "127" => g1(Set::Single(encoding_rs::ISO_8859_6)),
        "126" => g1(Set::Single(encoding_rs::ISO_8859_7)),
        "138" => g1(Set::Single(encoding_rs::ISO_8859_8)),
        "148" => g1(Set::Single(encoding_rs::WINDOWS_1254)),
        "166" => g1(Set::Single(encoding_rs::WINDOWS_874)),
        "149" => g1(Set::Ksx1001),
        "58" => g1(Set::Gb2312),
        "87" => State { g0: Set::Jis0208, g1: None },
        "159" => State { g0: Set::Jis0212, g1: None },
        _ => State { g0: Set::Ascii, g1: None },
    }
}

/// Whether a value of (0008,0005) calls for this decoder rather than dicom-rs's own.
pub fn needs_code_extensions(specific_character_set: &[String]) -> bool {
    specific_character_set.len() > 1 || specific_character_set.iter().any(|term| term.contains("2022"))
}

/// Applies an escape sequence at `bytes[0] == ESC`; returns how many bytes it used.
fn escape(bytes: &[u8], state: &mut State) -> usize {
    let sequences: &[(&[u8], bool, Set)] = &[
        (b"\x1b(B", true, Set::Ascii),
        (b"\x1b(J", true, Set::JisRoman),
        (b"\x1b)I", false, Set::JisKatakana),
        (b"\x1b$B", true, Set::Jis0208),
        (b"\x1b$(D", true, Set::Jis0212),
        (b"\x1b$)C", false, Set::Ksx1001),
        (b"\x1b$)A", false, Set::Gb2312),
        (b"\x1b-A", false, Set::Single(encoding_rs::WINDOWS_1252)),
        (b"\x1b-B", false, Set::Single(encoding_rs::ISO_8859_2)),
        (b"\x1b-C", false, Set::Single(encoding_rs::ISO_8859_3)),
        (b"\x1b-D", false, Set::Single(encoding_rs::ISO_8859_4)),
        (b"\x1b-L", false, Set::Single(encoding_rs::ISO_8859_5)),
        (b"\x1b-G", false, Set::Single(encoding_rs::ISO_8859_6)),
        (b"\x1b-F", false, Set::Single(encoding_rs::ISO_8859_7)),
        (b"\x1b-H", false, Set::Single(encoding_rs::ISO_8859_8)),
        (b"\x1b-M", false, Set::Single(encoding_rs::WINDOWS_1254)),
        (b"\x1b-T", false, Set::Single(encoding_rs::WINDOWS_874)),
    ];
    for (sequence, is_g0, set) in sequences {
        if bytes.starts_with(sequence) {
            if *is_g0 {
                state.g0 = *set;
            } else {
                state.g1 = Some(*set);
            }
            return sequence.len();
        }
    }
    1 // An unknown escape: drop the ESC byte itself.
}

fn decode_with(encoding: &'static Encoding, bytes: &[u8], out: &mut String) {
    out.push_str(&encoding.decode_without_bom_handling(bytes).0);
}

/// Decodes `raw` (one element's value field, all values) under the given (0008,0005) terms.
pub fn decode(raw: &[u8], specific_character_set: &[String], person_name: bool) -> String {
    let initial = initial_state(specific_character_set.first().map_or("", String::as_str));
    let mut state = initial;
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let byte = raw[i];
        if byte == 0x1B {
            i += escape(&raw[i..], &mut state);
            continue;
        }
        let pair = raw.get(i + 1).copied();
        if byte < 0x80 {
            match state.g0 {
                Set::Jis0208 | Set::Jis0212 if (0x21..=0x7E).contains(&byte) && pair.is_some() => {
                    let second = pair.unwrap_or(0) | 0x80;
                    if state.g0 == Set::Jis0212 {
                        decode_with(encoding_rs::EUC_JP, &[0x8F, byte | 0x80, second], &mut out);
                    } else {
                        decode_with(encoding_rs::EUC_JP, &[byte | 0x80, second], &mut out);
                    }
                    i += 2;
                    continue;
                }
                _ => {
                    out.push(byte as char);
                    let delimiter = matches!(byte, b'\\' | b'\r' | b'\n' | b'\t' | 0x0C)
                        || (person_name && matches!(byte, b'^' | b'='));
                    if delimiter {
                        state = initial;
                    }
                }
            }
            i += 1;
            continue;
        }
        match state.g1 {
            Some(Set::JisKatakana) if (0xA1..=0xDF).contains(&byte) => {
                out.push(char::from_u32(0xFF61 + u32::from(byte - 0xA1)).unwrap_or('\u{FFFD}'));
                i += 1;
            }
            Some(Set::Ksx1001) if pair.is_some() => {
                decode_with(encoding_rs::EUC_KR, &raw[i..i + 2], &mut out);
                i += 2;
            }
            Some(Set::Gb2312) if pair.is_some() => {
                decode_with(encoding_rs::GBK, &raw[i..i + 2], &mut out);
                i += 2;
            }
            Some(Set::Single(encoding)) => {
                decode_with(encoding, &raw[i..i + 1], &mut out);
                i += 1;
            }
            _ => {
                out.push('\u{FFFD}');
                i += 1;
            }
        }
    }
    out.trim_end_matches(['\0', ' ']).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    /// PS3.5 Annex H.3.1: ISO 2022 IR 87 with an empty first value.
    #[test]
    fn japanese_kanji_and_hiragana_person_name() {
        let raw = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
        let decoded = decode(raw, &terms(&["", "ISO 2022 IR 87"]), true);
        assert_eq!(decoded, "Yamada^Tarou=山田^太郎=やまだ^たろう");
    }

    /// PS3.5 Annex H.3.2: half-width katakana in G1 with ISO 2022 IR 13.
    #[test]
    fn japanese_half_width_katakana_person_name() {
        let raw =
            b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J=\x1b$B$d$^$@\x1b(J^\x1b$B$?$m$&\x1b(J";
        let decoded = decode(raw, &terms(&["ISO 2022 IR 13", "ISO 2022 IR 87"]), true);
        assert_eq!(decoded, "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう");
    }

    #[test]
    fn korean_in_g1() {
        let raw = b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf";
        let decoded = decode(raw, &terms(&["", "ISO 2022 IR 149"]), true);
        assert_eq!(decoded, "Hong^Gildong=洪^吉洞=홍^길동");
    }

    #[test]
    fn needs_code_extensions_only_for_iso_2022() {
        assert!(needs_code_extensions(&terms(&["", "ISO 2022 IR 87"])));
        assert!(!needs_code_extensions(&terms(&["ISO_IR 192"])));
        assert!(!needs_code_extensions(&terms(&["ISO_IR 100"])));
    }
}
