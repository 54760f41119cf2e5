//! Character sets: stored text in any supported Specific Character Set comes out as UTF-8
//! (PS3.18 §8.7.3.5.3, Annex F; PS3.5 §6.1).

use dicom_dictionary_std::tags;
use serde_json::json;

use crate::support::*;

/// PS3.18 Annex F.2, §8.7.3.5.3: DICOM JSON and XML are UTF-8. A name stored in ISO 8859-1
/// (ISO_IR 100) is returned, and matched, as Unicode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn char_001_latin1_names_are_returned_and_matched_as_utf8() {
    let spec = Spec::new(401, 1, 1);
    let latin1 = splice_element(&instance(&spec), tags::SPECIFIC_CHARACTER_SET, b"CS", b"ISO_IR 100");
    let latin1 = splice_element(&latin1, tags::PATIENT_NAME, b"PN", b"M\xFCller^Hans");
    let server = Server::with(&[latin1]).await;
    let rows = qido(&server.base, &format!("/studies?PatientName={}", encode("müller*"))).await;
    assert_eq!(rows.len(), 1, "matched case-insensitively in Unicode");
    assert_eq!(rows[0]["00100010"]["Value"][0], json!({"Alphabetic": "Müller^Hans"}));
    assert!(rows[0].get("00080005").is_none(), "Specific Character Set is not echoed");
    let reply = get(&format!("{}/studies", server.base), "multipart/related; type=\"application/dicom+xml\"").await;
    let parts = split_multipart(reply.content_type(), &reply.body);
    let xml = String::from_utf8(parts[0].1.clone()).expect("UTF-8");
    assert!(xml.contains("<FamilyName>Müller</FamilyName>"), "{xml}");
}

/// PS3.5 §6.1.2.5, Annex H: ISO 2022 code extensions. The PS3.5 H.3.1 example, a Japanese name
/// in JIS X 0208 under `\ISO 2022 IR 87`, is decoded into its three component groups.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn char_002_iso_2022_japanese_names_are_decoded() {
    let spec = Spec::new(402, 1, 1);
    let raw: &[u8] = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B";
    let japanese = splice_element(&instance(&spec), tags::SPECIFIC_CHARACTER_SET, b"CS", b"\\ISO 2022 IR 87");
    let japanese = splice_element(&japanese, tags::PATIENT_NAME, b"PN", raw);
    let server = Server::with(&[japanese]).await;
    let rows = qido(&server.base, &format!("/studies?PatientName={}", encode("山田^太郎"))).await;
    assert_eq!(rows.len(), 1, "matched on the ideographic group");
    assert_eq!(
        rows[0]["00100010"]["Value"][0],
        json!({"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"})
    );
}

/// PS3.18 §8.3.3.2, §8.8.1, §8.8.5: the `charset` query parameter names acceptable character
/// sets; Kura answers in UTF-8 only, so a value that names no UTF-8 (or a wildcard, or nonsense)
/// is 400. An unsupported Accept-Charset falls back to the default, UTF-8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn char_003_charset_parameter() {
    let server = Server::start().await;
    for (query, status) in [
        ("/studies?charset=no-such-charset", http::StatusCode::BAD_REQUEST),
        ("/studies?charset=ISO-8859-1", http::StatusCode::BAD_REQUEST),
        ("/studies?charset=*", http::StatusCode::BAD_REQUEST),
        ("/studies?charset=UTF-8", http::StatusCode::OK),
        ("/studies?charset=ISO-8859-1,utf-8", http::StatusCode::OK),
        ("/studies?charset=ISO_IR%20192", http::StatusCode::OK),
    ] {
        let reply = get(&format!("{}{query}", server.base), "application/dicom+json").await;
        assert_eq!(reply.status, status, "{query}");
    }
    let reply = send(
        http::Method::GET,
        &format!("{}/studies", server.base),
        &[("accept", "application/dicom+json"), ("accept-charset", "ISO-8859-1")],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(reply.status, http::StatusCode::OK);
    assert_eq!(reply.content_type(), "application/dicom+json");
}
