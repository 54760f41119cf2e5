//! Retrieve Capabilities (PS3.18 §8.9, Annex H): `OPTIONS {root}/` answers a WADL document
//! describing every resource Kura serves, its methods (named by transaction), the query
//! parameters and media types each accepts, and the media types it answers with. `OPTIONS` on a
//! resource below the root answers the same document cut to that resource and its children (the
//! form of the earlier editions' §6.8). `application/json` gets the same tree as JSON.
//!
//! The tree is written once, below, from the same constants the transactions use: the query
//! keys come from the attribute table (`dicom::attrs`), so the description cannot drift from
//! what QIDO-RS matches.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use serde_json::{Value as Json, json};

use super::{RequestContext, ResponseBody, accepted_types, full_body};
use crate::dicom::attrs::{ATTRIBUTES, Level};
use crate::error::{Error, ErrorKind};
use crate::media::mime::APPLICATION_JSON;

pub const WADL: &str = "application/vnd.sun.wadl+xml";
const WADL_NAMESPACE: &str = "http://wadl.dev.java.net/2009/02";

const DICOM_JSON: &str = "application/dicom+json";
const DICOM_XML_MULTIPART: &str = "multipart/related; type=\"application/dicom+xml\"";
const DICOM_MULTIPART: &str = "multipart/related; type=\"application/dicom\"";

/// One method of a resource: an HTTP method and the transaction it carries.
struct Method {
    name: &'static str,
    id: &'static str,
    /// Query parameters (name, the values or syntax Kura accepts).
    query: Vec<(String, String)>,
    /// Media types the Accept header may name.
    accept: Vec<&'static str>,
    /// Media types of the request payload (Store).
    consumes: Vec<&'static str>,
    /// Status codes and the media types of their payloads.
    responses: Vec<(u16, Vec<&'static str>)>,
}

struct Resource {
    path: &'static str,
    methods: Vec<Method>,
    children: Vec<Resource>,
}

fn resource(path: &'static str, methods: Vec<Method>, children: Vec<Resource>) -> Resource {
    Resource { path, methods, children }
}

/// QIDO-RS at `level`: the match keys of that level and the levels above (PS3.18 §10.6.1.2),
/// then the other parameters of Table 8.3.4-1.
fn search(id: &'static str, level: Level) -> Method {
    let mut query: Vec<(String, String)> = ATTRIBUTES
        .iter()
        .filter(|a| a.level <= level)
        .map(|a| (a.keyword.to_string(), format!("{} ({:04X}{:04X})", a.vr, a.tag.group(), a.tag.element())))
        .collect();
    for (name, syntax) in [
        ("includefield", "all | {attribute}[,{attribute}]*"),
        ("fuzzymatching", "true | false"),
        ("emptyvaluematching", "true | false"),
        ("limit", "unsigned integer"),
        ("offset", "unsigned integer"),
        ("accept", "media types"),
        ("charset", "UTF-8"),
    ] {
        query.push((name.to_string(), syntax.to_string()));
    }
    Method {
        name: "GET",
        id,
        query,
        accept: vec![DICOM_JSON, DICOM_XML_MULTIPART],
        consumes: Vec::new(),
        responses: vec![(200, vec![DICOM_JSON, DICOM_XML_MULTIPART]), (400, vec![APPLICATION_JSON])],
    }
}

/// A WADO-RS GET: the `accept` query parameter, the Accept header's options, which are also the
/// 200 response's media types, then the other responses.
fn get(id: &'static str, accept: Vec<&'static str>, others: Vec<(u16, Vec<&'static str>)>) -> Method {
    let mut responses = vec![(200, accept.clone())];
    responses.extend(others);
    Method {
        name: "GET",
        id,
        query: vec![("accept".into(), "media types".into())],
        accept,
        consumes: Vec::new(),
        responses,
    }
}

fn retrieve(id: &'static str, single_part: bool) -> Method {
    let mut accept =
        vec![DICOM_MULTIPART, "multipart/related; type=\"application/dicom\"; transfer-syntax=*", "application/zip"];
    if single_part {
        accept.push("application/dicom");
    }
    get(id, accept, vec![(404, vec![APPLICATION_JSON]), (406, vec![APPLICATION_JSON])])
}

fn metadata(id: &'static str) -> Resource {
    let method = get(id, vec![DICOM_JSON, DICOM_XML_MULTIPART], vec![(304, Vec::new()), (404, vec![APPLICATION_JSON])]);
    resource("metadata", vec![method], Vec::new())
}

/// `…/rendered` and `…/thumbnail` below a resource (§10.4.1.1.3, §10.4.1.1.4).
fn rendered(rendered_id: &'static str, thumbnail_id: &'static str) -> [Resource; 2] {
    let images = vec![
        "image/jpeg",
        "image/png",
        "multipart/related; type=\"image/jpeg\"",
        "multipart/related; type=\"image/png\"",
    ];
    let method = |id, query: &[(&str, &str)]| Method {
        name: "GET",
        id,
        query: query.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect(),
        accept: images.clone(),
        consumes: Vec::new(),
        responses: vec![
            (200, images.clone()),
            (400, vec![APPLICATION_JSON]),
            (404, vec![APPLICATION_JSON]),
            (406, vec![APPLICATION_JSON]),
        ],
    };
    let viewport = ("viewport", "vw,vh[,sx,sy,sw,sh]");
    [
        resource(
            "rendered",
            vec![method(
                rendered_id,
                &[
                    ("quality", "1..100 (JPEG quality)"),
                    viewport,
                    ("window", "center,width,linear|linear-exact|sigmoid"),
                    ("annotation", "patient,technique (accepted, not burnt in)"),
                    ("accept", "media types"),
                ],
            )],
            Vec::new(),
        ),
        resource(
            "thumbnail",
            vec![method(thumbnail_id, &[("viewport", "vw,vh (default: 128 pixels on the longer side)")])],
            Vec::new(),
        ),
    ]
}

fn with_rendered(rendered_id: &'static str, thumbnail_id: &'static str, mut children: Vec<Resource>) -> Vec<Resource> {
    children.extend(rendered(rendered_id, thumbnail_id));
    children
}

fn store(id: &'static str) -> Method {
    Method {
        name: "POST",
        id,
        query: Vec::new(),
        accept: vec![DICOM_JSON, "application/dicom+xml"],
        consumes: vec![DICOM_MULTIPART],
        responses: vec![
            (200, vec![DICOM_JSON, "application/dicom+xml"]),
            (202, vec![DICOM_JSON, "application/dicom+xml"]),
            (409, vec![DICOM_JSON, "application/dicom+xml"]),
            (400, vec![APPLICATION_JSON]),
            (413, vec![APPLICATION_JSON]),
            (415, vec![APPLICATION_JSON]),
        ],
    }
}

fn octets(id: &'static str, accept: Vec<&'static str>) -> Method {
    get(id, accept, vec![(206, vec!["application/octet-stream"]), (404, vec![APPLICATION_JSON])])
}

/// A Worklist service (UPS-RS) method: DICOM JSON in and out (PS3.18 §11.1.3).
fn worklist_method(
    name: &'static str,
    id: &'static str,
    query: &[(&str, &str)],
    consumes: bool,
    responses: &[u16],
) -> Method {
    Method {
        name,
        id,
        query: query.iter().map(|(n, s)| (n.to_string(), s.to_string())).collect(),
        accept: if name == "GET" { vec![DICOM_JSON] } else { Vec::new() },
        consumes: if consumes { vec![DICOM_JSON] } else { Vec::new() },
        responses: responses
            .iter()
            .map(|status| {
                (*status, if *status == 200 && name == "GET" { vec![DICOM_JSON] } else { vec![APPLICATION_JSON] })
            })
            .collect(),
    }
}

/// The Worklist service's resources (PS3.18 Table 11.1.1-1) and the notification connection
/// (§8.10, Kura's URL form).
fn worklist() -> [Resource; 2] {
    let subscription = resource(
        "subscribers/{AETitle}",
        vec![
            worklist_method(
                "POST",
                "CreateSubscription",
                &[
                    ("deletionlock", "true | false (never granted)"),
                    ("filter", "{attribute}={value}[,…] (filtered worklist)"),
                ],
                false,
                &[201, 400, 404],
            ),
            worklist_method("DELETE", "DeleteSubscription", &[], false, &[200, 400, 404]),
        ],
        vec![resource(
            "suspend",
            vec![worklist_method("POST", "SuspendGlobalSubscription", &[], false, &[200, 400, 404])],
            Vec::new(),
        )],
    );
    let workitem = resource(
        "{WorkitemUID}",
        vec![
            worklist_method("GET", "RetrieveWorkitem", &[], false, &[200, 400, 404, 406]),
            worklist_method(
                "POST",
                "UpdateWorkitem",
                &[("transaction-uid", "UID (required once claimed)")],
                true,
                &[200, 400, 404, 415],
            ),
        ],
        vec![
            resource(
                "state",
                vec![worklist_method("PUT", "ChangeWorkitemState", &[], true, &[200, 400, 404, 415])],
                Vec::new(),
            ),
            resource(
                "cancelrequest",
                vec![worklist_method("POST", "RequestWorkitemCancellation", &[], true, &[202, 400, 404, 409])],
                Vec::new(),
            ),
            subscription,
        ],
    );
    [
        resource(
            "workitems",
            vec![
                worklist_method(
                    "GET",
                    "SearchForWorkitems",
                    &[
                        ("{attribute}", "match key by keyword, tag or sequence path (PS3.4 C.2.2.2)"),
                        ("includefield", "accepted; every attribute is returned"),
                        ("fuzzymatching", "true | false (not supported: Warning)"),
                        ("limit", "unsigned integer"),
                        ("offset", "unsigned integer"),
                    ],
                    false,
                    &[200, 400],
                ),
                worklist_method(
                    "POST",
                    "CreateWorkitem",
                    &[("{WorkitemUID}", "the new workitem's UID (or SOP Instance UID in the payload)")],
                    true,
                    &[201, 400, 409, 413, 415],
                ),
            ],
            vec![workitem],
        ),
        resource(
            "subscribers/{AETitle}",
            vec![worklist_method("GET", "OpenNotificationConnection", &[], false, &[101, 400, 503])],
            Vec::new(),
        ),
    ]
}

/// Every resource Kura serves under the DICOMweb root (Annex H Table H-1, the implemented part).
fn tree() -> Resource {
    let frames = "multipart/related; type=\"application/octet-stream\"";
    let compressed_frames = [
        "multipart/related; type=\"image/jpeg\"",
        "multipart/related; type=\"image/jls\"",
        "multipart/related; type=\"image/jp2\"",
        "multipart/related; type=\"image/jpx\"",
        "multipart/related; type=\"image/jphc\"",
        "multipart/related; type=\"image/dicom-rle\"",
    ];
    let instance = resource(
        "{SOPInstanceUID}",
        vec![retrieve("RetrieveInstance", true)],
        with_rendered(
            "RetrieveRenderedInstance",
            "RetrieveInstanceThumbnail",
            vec![
                metadata("RetrieveInstanceMetadata"),
                resource(
                    "frames/{frameList}",
                    vec![octets("RetrieveFrames", [frames].into_iter().chain(compressed_frames).collect())],
                    rendered("RetrieveRenderedFrames", "RetrieveFrameThumbnail").into(),
                ),
                resource(
                    "bulkdata/{tag}",
                    vec![octets("RetrieveBulkdata", vec![frames, "application/octet-stream"])],
                    Vec::new(),
                ),
            ],
        ),
    );
    let series = resource(
        "{SeriesInstanceUID}",
        vec![retrieve("RetrieveSeries", false)],
        with_rendered(
            "RetrieveRenderedSeries",
            "RetrieveSeriesThumbnail",
            vec![
                metadata("RetrieveSeriesMetadata"),
                resource("instances", vec![search("SearchForStudySeriesInstances", Level::Instance)], vec![instance]),
            ],
        ),
    );
    let study = resource(
        "{StudyInstanceUID}",
        vec![retrieve("RetrieveStudy", false), store("StoreStudyInstances")],
        with_rendered(
            "RetrieveRenderedStudy",
            "RetrieveStudyThumbnail",
            vec![
                metadata("RetrieveStudyMetadata"),
                resource("series", vec![search("SearchForStudySeries", Level::Series)], vec![series]),
                resource("instances", vec![search("SearchForStudyInstances", Level::Instance)], Vec::new()),
            ],
        ),
    );
    resource(
        "",
        Vec::new(),
        vec![
            resource("studies", vec![search("SearchForStudies", Level::Study), store("StoreInstances")], vec![study]),
            resource("series", vec![search("SearchForSeries", Level::Series)], Vec::new()),
            resource("instances", vec![search("SearchForInstances", Level::Instance)], Vec::new()),
        ]
        .into_iter()
        .chain(worklist())
        .collect(),
    )
}

/// The resource a path relative to the root names, with the path segments leading to it (each
/// template segment such as `{StudyInstanceUID}` matching any value).
fn find<'a>(root: &'a Resource, relative: &str) -> Option<Vec<&'a Resource>> {
    let mut chain = vec![root];
    let mut segments = relative.split('/').filter(|s| !s.is_empty()).peekable();
    while let Some(segment) = segments.next() {
        let current = *chain.last().expect("never empty");
        let next = current.children.iter().find(|child| {
            let mut parts = child.path.split('/');
            let first = parts.next().unwrap_or_default();
            let matches = |pattern: &str, value: &str| pattern == value || pattern.starts_with('{');
            if !matches(first, segment) {
                return false;
            }
            // Two-segment paths such as frames/{frameList}.
            parts.all(|pattern| segments.peek().is_some_and(|value| matches(pattern, value)))
        })?;
        for _ in 1..next.path.split('/').count() {
            segments.next();
        }
        chain.push(next);
    }
    Some(chain)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn write_method(out: &mut String, method: &Method) {
    out.push_str(&format!("<method name=\"{}\" id=\"{}\"><request>", method.name, method.id));
    if !method.accept.is_empty() {
        out.push_str("<param name=\"Accept\" style=\"header\">");
        for media in &method.accept {
            out.push_str(&format!("<option value=\"{}\"/>", escape(media)));
        }
        out.push_str("</param>");
    }
    for (name, syntax) in &method.query {
        out.push_str(&format!(
            "<param name=\"{}\" style=\"query\"><doc>{}</doc></param>",
            escape(name),
            escape(syntax)
        ));
    }
    for media in &method.consumes {
        out.push_str(&format!("<representation mediaType=\"{}\"/>", escape(media)));
    }
    out.push_str("</request>");
    for (status, media_types) in &method.responses {
        out.push_str(&format!("<response status=\"{status}\">"));
        for media in media_types {
            out.push_str(&format!("<representation mediaType=\"{}\"/>", escape(media)));
        }
        out.push_str("</response>");
    }
    out.push_str("</method>");
}

fn write_resource(out: &mut String, resource: &Resource, descend: bool) {
    out.push_str(&format!("<resource path=\"{}\">", escape(resource.path)));
    for method in &resource.methods {
        write_method(out, method);
    }
    if descend {
        for child in &resource.children {
            write_resource(out, child, true);
        }
    }
    out.push_str("</resource>");
}

/// The WADL document: the path to the target as nested resources, the target with its subtree.
fn wadl(base_url: &str, chain: &[&Resource]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<application xmlns=\"{WADL_NAMESPACE}\"><doc title=\"Kura {}\">\
         DICOMweb origin server (PS3.18); see conformance/STATEMENT.md</doc><resources base=\"{}/\">",
        env!("CARGO_PKG_VERSION"),
        escape(base_url)
    );
    let (target, path) = chain.split_last().expect("the root at least");
    let path = &path[path.len().min(1)..]; // the root has no element of its own
    for resource in path {
        out.push_str(&format!("<resource path=\"{}\">", escape(resource.path)));
    }
    if chain.len() == 1 {
        for child in &target.children {
            write_resource(&mut out, child, true);
        }
    } else {
        write_resource(&mut out, target, true);
    }
    for _ in path {
        out.push_str("</resource>");
    }
    out.push_str("</resources></application>\n");
    out
}

fn method_json(method: &Method) -> Json {
    json!({
        "name": method.name,
        "id": method.id,
        "request": {
            "accept": method.accept,
            "query": method.query.iter().map(|(name, syntax)| json!({"name": name, "syntax": syntax})).collect::<Vec<_>>(),
            "representation": method.consumes,
        },
        "response": method.responses.iter().map(|(status, media)| json!({"status": status, "representation": media})).collect::<Vec<_>>(),
    })
}

fn resource_json(resource: &Resource) -> Json {
    json!({
        "path": resource.path,
        "method": resource.methods.iter().map(method_json).collect::<Vec<_>>(),
        "resource": resource.children.iter().map(resource_json).collect::<Vec<_>>(),
    })
}

/// The JSON form: the WADL tree with the same names (`application`, `resources`, `resource`,
/// `method`), for clients that prefer JSON (§8.9.4).
fn json_document(base_url: &str, chain: &[&Resource]) -> Json {
    let target = chain.last().expect("the root at least");
    let mut resources: Vec<Json> = if chain.len() == 1 {
        target.children.iter().map(resource_json).collect()
    } else {
        vec![resource_json(target)]
    };
    let ancestors = if chain.len() > 2 { &chain[1..chain.len() - 1] } else { &[] };
    for ancestor in ancestors.iter().rev() {
        resources = vec![json!({"path": ancestor.path, "method": [], "resource": resources})];
    }
    json!({"application": {"resources": {"base": format!("{base_url}/"), "resource": resources}}})
}

/// `OPTIONS {root}[/{resource}]`.
pub fn describe(
    context: &RequestContext,
    relative_path: &str,
    headers: &HeaderMap,
) -> Result<Response<ResponseBody>, Error> {
    let root = tree();
    let chain = find(&root, relative_path).ok_or_else(|| Error::not_found("no such DICOMweb resource"))?;
    let json = match accepted_types(headers) {
        None => false,
        Some(accepted) => accepted
            .iter()
            .find_map(|media| match media.essence.as_str() {
                WADL | "application/xml" | "text/xml" | "*/*" | "application/*" => Some(false),
                APPLICATION_JSON => Some(true),
                _ => None,
            })
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotAcceptable,
                    format!("the capabilities are available as {WADL} and {APPLICATION_JSON}"),
                )
            })?,
    };
    let (content_type, body) = if json {
        (APPLICATION_JSON, json_document(&context.base_url, &chain).to_string())
    } else {
        (WADL, wadl(&context.base_url, &chain))
    };
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let not_modified = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|candidate| candidate.trim() == etag || candidate.trim() == "*");
    let builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ALLOW, allowed_methods(chain.last().expect("the root at least")));
    if not_modified {
        return Ok(builder.status(StatusCode::NOT_MODIFIED).body(super::empty_body()).expect("valid response"));
    }
    Ok(builder
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .body(full_body(Bytes::from(body)))
        .expect("valid response"))
}

fn allowed_methods(resource: &Resource) -> String {
    let mut methods = vec!["OPTIONS"];
    if resource.methods.iter().any(|m| m.name == "GET") {
        methods.splice(0..0, ["GET", "HEAD"]);
    }
    if resource.methods.iter().any(|m| m.name == "POST") {
        methods.insert(methods.len() - 1, "POST");
    }
    methods.join(", ")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_find_their_resource() {
        let root = tree();
        let path = |p: &str| find(&root, p).map(|chain| chain.iter().map(|r| r.path).collect::<Vec<_>>());
        assert_eq!(path("/"), Some(vec![""]));
        assert_eq!(path("/studies/1.2/series"), Some(vec!["", "studies", "{StudyInstanceUID}", "series"]));
        assert_eq!(
            path("/studies/1.2/series/1.3/instances/1.4/frames/1,2"),
            Some(vec![
                "",
                "studies",
                "{StudyInstanceUID}",
                "series",
                "{SeriesInstanceUID}",
                "instances",
                "{SOPInstanceUID}",
                "frames/{frameList}"
            ])
        );
        assert_eq!(path("/studies/1.2/rendered").map(|p| p.len()), Some(4));
        assert_eq!(path("/studies/1.2/pixeldata"), None);
        assert_eq!(path("/nothing"), None);
    }

    #[test]
    fn every_transaction_is_described_once() {
        let root = tree();
        let mut ids = Vec::new();
        fn collect(resource: &Resource, ids: &mut Vec<&'static str>) {
            ids.extend(resource.methods.iter().map(|m| m.id));
            resource.children.iter().for_each(|c| collect(c, ids));
        }
        collect(&root, &mut ids);
        let count = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), count, "ids are unique");
        assert_eq!(count, 34);
    }
}
