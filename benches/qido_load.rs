//! QIDO-RS load benchmark: generates a seeded archive of metadata-only instances (Explicit VR
//! Little Endian PS3.10, no Pixel Data) with varied, realistic attributes, loads it with STOW-RS,
//! then measures a mix of QIDO-RS searches: latency with one client, throughput with several.
//!
//! The same program measures any DICOMweb server, so that archives are compared on identical
//! queries: with `KURA_BENCH_URL` set it talks to that DICOMweb root (e.g.
//! `http://127.0.0.1:8042/dicom-web` for Orthanc); without it, it starts a `kura serve` child on
//! `KURA_BENCH_DATA` (default: a temporary directory, removed afterwards).
//!
//! `cargo bench --bench qido_load`. The scale and the run are set by environment variables (the
//! defaults are small; see benches/README.md for the million-instance run):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KURA_BENCH_STUDIES` | 2000 | studies of the regular kind |
//! | `KURA_BENCH_SERIES` | 5 | series per study |
//! | `KURA_BENCH_INSTANCES` | 10 | instances per series |
//! | `KURA_BENCH_BIG_SERIES` | 1000 | instances of the one extra study with a single large series (0: none) |
//! | `KURA_BENCH_SEED` | 1 | generator seed (the same seed and scale give the same archive) |
//! | `KURA_BENCH_MODE` | `all` | `all` (load, then query), `load`, or `query` (the data is already there) |
//! | `KURA_BENCH_URL` | — | DICOMweb root of a running server; otherwise a kura child is started |
//! | `KURA_BENCH_DATA` | temp dir | data directory of the kura child (kept when given) |
//! | `KURA_BENCH_BIN` | the built `kura` | kura binary for the child |
//! | `KURA_BENCH_PID` | the child | process whose VmRSS/VmHWM is reported |
//! | `KURA_BENCH_INDEX_PATH` | `DATA/index` | file or directory reported as the index size |
//! | `KURA_BENCH_DATA_PATH` | `DATA` | file or directory reported as the total size on disk |
//! | `KURA_BENCH_LOAD_CLIENTS` | 4 | concurrent STOW-RS requests while loading |
//! | `KURA_BENCH_BATCH` | 250 | instances per STOW-RS request |
//! | `KURA_BENCH_LOAD_TIMEOUT` | 3600 | seconds after which loading stops (what was loaded is reported) |
//! | `KURA_BENCH_LOAD_FROM` | 0 | first instance (in loading order) to send: resumes a cut-short load |
//! | `KURA_BENCH_LOADED` | all | instances a cut-short load stored (queries then draw from those studies) |
//! | `KURA_BENCH_REPS` | 200 | repetitions of each query with one client |
//! | `KURA_BENCH_KIND_BUDGET` | 120 | seconds after which the repetitions of one query stop (slow servers) |
//! | `KURA_BENCH_CLIENTS` | 8 | concurrent clients of the throughput run |
//! | `KURA_BENCH_SECONDS` | 20 | length of the throughput run |
//! | `KURA_BENCH_LABEL` | `kura` | name printed in the tables |
//! | `KURA_BENCH_SLOWEST` | false | `true` also prints the three slowest requests of each query |

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[path = "support/mod.rs"]
mod support;

use support::{HttpClient, KuraChild, Rng, element, env_or, file_meta, proc_status_kib, stow};

/// UID root of the generated objects (the Kura benchmark arc).
const ROOT: &str = "1.2.826.0.1.3680043.10.543.20";
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone)]
struct Scale {
    studies: usize,
    series: usize,
    instances: usize,
    big_series: usize,
    seed: u64,
    /// Studies the queries draw their values from: all of them, unless a load was cut short.
    queryable: usize,
}

impl Scale {
    fn regular(&self) -> usize {
        self.studies * self.series * self.instances
    }

    fn total(&self) -> usize {
        self.regular() + self.big_series
    }

    /// The regular studies complete among the first `loaded` instances (loading order).
    fn complete_studies(&self, loaded: usize) -> usize {
        (loaded.saturating_sub(self.big_series) / (self.series * self.instances)).min(self.studies)
    }
}

// ---------------------------------------------------------------------------------------------
// The archive's contents

const FAMILY: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Dubois",
    "Moreau",
    "Laurent",
    "Lefebvre",
    "Rossi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Bianchi",
    "Romano",
    "Kowalski",
    "Nowak",
    "Wisniewski",
    "Jansen",
    "de Vries",
    "van Dijk",
    "Bakker",
    "Visser",
    "Smits",
    "O'Brien",
    "Murphy",
    "Kelly",
    "Walsh",
    "Byrne",
    "Ryan",
    "Johansson",
    "Andersson",
    "Karlsson",
    "Nilsson",
    "Larsen",
    "Hansen",
    "Pedersen",
    "Novak",
    "Horvat",
    "Kovacs",
    "Nagy",
    "Popescu",
    "Ivanov",
    "Petrov",
    "Silva",
    "Santos",
    "Oliveira",
    "Pereira",
    "Costa",
    "Cohen",
    "Levi",
    "Kim",
    "Park",
    "Chen",
    "Wang",
    "Li",
    "Zhang",
    "Liu",
    "Singh",
    "Kumar",
    "Patel",
    "Shah",
    "Khan",
    "Ali",
    "Hussain",
    "Okafor",
    "Mensah",
    "Abebe",
    "Haddad",
    "Yilmaz",
    "Demir",
    "Papadopoulos",
    "Ortega",
    "Castillo",
    "Vargas",
];
const GIVEN_MALE: &[&str] = &[
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas", "Charles", "Daniel",
    "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew", "Peter", "Thomas", "Lukas", "Jan", "Pierre", "Marco",
    "Luca", "Jakub", "Piotr", "Ahmed", "Omar", "Wei", "Hiroshi", "Carlos", "Juan", "Ivan", "Erik", "Lars",
];
const GIVEN_FEMALE: &[&str] = &[
    "Mary",
    "Patricia",
    "Jennifer",
    "Linda",
    "Elizabeth",
    "Barbara",
    "Susan",
    "Jessica",
    "Sarah",
    "Karen",
    "Nancy",
    "Lisa",
    "Margaret",
    "Emily",
    "Anna",
    "Sophie",
    "Marie",
    "Julia",
    "Laura",
    "Giulia",
    "Maria",
    "Agnieszka",
    "Fatima",
    "Aisha",
    "Mei",
    "Yuki",
    "Ana",
    "Olga",
    "Ingrid",
    "Astrid",
    "Chloe",
    "Emma",
    "Sofia",
    "Hannah",
];
/// Latin-1 names, stored with Specific Character Set ISO_IR 100.
const FAMILY_LATIN1: &[&str] = &["Müller", "Schäfer", "Jäger", "Núñez", "Peña", "Åberg", "Søndergaard", "Lefèvre"];
/// Japanese names (alphabetic = ideographic = phonetic), stored with ISO_IR 192 (UTF-8).
const JAPANESE: &[(&str, &str, &str, &str)] = &[
    ("Yamada^Tarou", "山田^太郎", "やまだ^たろう", "M"),
    ("Yamada^Hanako", "山田^花子", "やまだ^はなこ", "F"),
    ("Tanaka^Ichirou", "田中^一郎", "たなか^いちろう", "M"),
    ("Suzuki^Yuki", "鈴木^由紀", "すずき^ゆき", "F"),
    ("Satou^Kenji", "佐藤^健二", "さとう^けんじ", "M"),
    ("Takahashi^Akiko", "高橋^明子", "たかはし^あきこ", "F"),
    ("Watanabe^Hiroshi", "渡辺^浩", "わたなべ^ひろし", "M"),
    ("Itou^Sakura", "伊藤^さくら", "いとう^さくら", "F"),
    ("Nakamura^Daisuke", "中村^大輔", "なかむら^だいすけ", "M"),
    ("Kobayashi^Megumi", "小林^恵", "こばやし^めぐみ", "F"),
];

struct Patient {
    name: String,
    /// The family name as typed in a search box (alphabetic form).
    family: String,
    charset: Option<&'static str>,
    id: String,
    birth_date: String,
    sex: &'static str,
}

fn patient(seed: u64, p: usize) -> Patient {
    let mut rng = Rng::new(seed, 1, p as u64);
    let id = format!("{:08}", (p as u64 * 7919 + 10_000_000) % 100_000_000);
    let birth_date = format!("{}{:02}{:02}", 1930 + rng.below(90), 1 + rng.below(12), 1 + rng.below(28));
    let roll = rng.below(100);
    if roll < 5 {
        let (alphabetic, ideographic, phonetic, sex) = *rng.pick(JAPANESE);
        return Patient {
            name: format!("{alphabetic}={ideographic}={phonetic}"),
            family: alphabetic.split('^').next().unwrap().to_string(),
            charset: Some("ISO_IR 192"),
            id,
            birth_date,
            sex,
        };
    }
    let male = rng.chance(50);
    let given = *rng.pick(if male { GIVEN_MALE } else { GIVEN_FEMALE });
    let (family, charset) =
        if roll < 8 { (*rng.pick(FAMILY_LATIN1), Some("ISO_IR 100")) } else { (*rng.pick_skewed(FAMILY), None) };
    let mut name = format!("{family}^{given}");
    if rng.chance(15) {
        name.push('^');
        name.push((b'A' + rng.below(26) as u8) as char);
    }
    Patient { name, family: family.to_string(), charset, id, birth_date, sex: if male { "M" } else { "F" } }
}

struct Procedure {
    modality: &'static str,
    descriptions: &'static [(&'static str, &'static str)],
}

/// Study descriptions with their body part, per primary modality.
const PROCEDURES: &[Procedure] = &[
    Procedure {
        modality: "CT",
        descriptions: &[
            ("CT CHEST W CONTRAST", "CHEST"),
            ("CT HEAD WO CONTRAST", "HEAD"),
            ("CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN"),
            ("CT ANGIO PULMONARY", "CHEST"),
            ("CT LUMBAR SPINE", "LSPINE"),
        ],
    },
    Procedure {
        modality: "MR",
        descriptions: &[
            ("MR BRAIN W WO CONTRAST", "BRAIN"),
            ("MR KNEE LEFT WO CONTRAST", "KNEE"),
            ("MR LUMBAR SPINE WO", "LSPINE"),
            ("MR PROSTATE MULTIPARAMETRIC", "PROSTATE"),
            ("MR CARDIAC FUNCTION", "HEART"),
        ],
    },
    Procedure {
        modality: "US",
        descriptions: &[
            ("US ABDOMEN COMPLETE", "ABDOMEN"),
            ("US THYROID", "NECK"),
            ("US OB 2ND TRIMESTER", "PELVIS"),
            ("US CAROTID DOPPLER BILATERAL", "NECK"),
        ],
    },
    Procedure {
        modality: "CR",
        descriptions: &[
            ("XR CHEST 2 VIEWS", "CHEST"),
            ("XR HAND RIGHT 3 VIEWS", "HAND"),
            ("XR KNEE LEFT 2 VIEWS", "KNEE"),
            ("XR PELVIS AP", "PELVIS"),
        ],
    },
    Procedure {
        modality: "PT",
        descriptions: &[("PET CT WHOLE BODY FDG", "WHOLEBODY"), ("PET CT SKULL TO THIGH FDG", "WHOLEBODY")],
    },
];
/// Share of studies per primary modality, in percent (CT, MR, US, CR, PT).
const PROCEDURE_SHARE: [usize; 5] = [30, 25, 15, 20, 10];
const MODALITIES: [&str; 5] = ["CT", "MR", "US", "CR", "PT"];
const INSTITUTIONS: &[&str] =
    &["General Hospital", "St. Mary Medical Center", "University Clinic", "Riverside Imaging", "城北病院"];
const REFERRING: &[&str] = &["Grey^Meredith", "House^Gregory", "Ross^Doug", "Quinn^Michaela", "Kildare^James", ""];

fn sop_class(modality: &str) -> &'static str {
    match modality {
        "CT" => "1.2.840.10008.5.1.4.1.1.2",
        "MR" => "1.2.840.10008.5.1.4.1.1.4",
        "US" => "1.2.840.10008.5.1.4.1.1.6.1",
        "CR" => "1.2.840.10008.5.1.4.1.1.1",
        _ => "1.2.840.10008.5.1.4.1.1.128",
    }
}

fn matrix(modality: &str) -> (u16, u16) {
    match modality {
        "CT" => (512, 512),
        "MR" => (256, 256),
        "US" => (600, 800),
        "CR" => (2500, 2048),
        _ => (200, 200),
    }
}

struct Series {
    uid: String,
    number: usize,
    modality: &'static str,
    description: String,
}

struct Study {
    uid: String,
    patient: Patient,
    date: String,
    time: String,
    accession: String,
    description: &'static str,
    body_part: &'static str,
    referring: &'static str,
    institution: &'static str,
    study_id: String,
    series: Vec<Series>,
}

/// Study `i` of the archive; `i == scale.studies` is the extra study with one large series.
fn study(scale: &Scale, i: usize) -> Study {
    let big = i == scale.studies;
    let mut rng = Rng::new(scale.seed, 2, i as u64);
    let patients = (scale.studies * 3 / 4).max(1);
    let patient = patient(scale.seed, rng.below(patients));
    let mut roll = rng.below(100);
    let mut primary = 0;
    while roll >= PROCEDURE_SHARE[primary] {
        roll -= PROCEDURE_SHARE[primary];
        primary += 1;
    }
    if big {
        primary = 0;
    }
    let procedure = &PROCEDURES[primary];
    let (description, body_part) = *rng.pick(procedure.descriptions);
    let date = format!("{}{:02}{:02}", 2005 + rng.below(21), 1 + rng.below(12), 1 + rng.below(28));
    let time = format!("{:02}{:02}{:02}", 7 + rng.below(12), rng.below(60), rng.below(60));
    let uid = format!("{ROOT}.{}.{date}.{i}", scale.seed);
    let n_series = if big { 1 } else { scale.series };
    let series = (0..n_series)
        .map(|s| {
            let modality = if procedure.modality == "PT" && s % 2 == 1 {
                "CT"
            } else if s > 0 && rng.chance(10) {
                "CR"
            } else {
                procedure.modality
            };
            Series {
                uid: format!("{uid}.{}", s + 1),
                number: s + 1,
                modality,
                description: format!("{} {}", modality, ["AX", "COR", "SAG", "SCOUT", "3D", "DWI"][rng.below(6)]),
            }
        })
        .collect();
    Study {
        uid,
        accession: format!("{}{:07}", &date[2..4], i),
        description,
        body_part,
        referring: REFERRING[rng.below(REFERRING.len())],
        institution: INSTITUTIONS[rng.below(INSTITUTIONS.len())],
        study_id: format!("{}", 1 + rng.below(9999)),
        patient,
        date,
        time,
        series,
    }
}

/// Where the `g`-th instance of the archive lives: (study, series, instance number - 1). The
/// large series comes first, so that a load cut short by its time limit still has it.
fn locate(scale: &Scale, g: usize) -> (usize, usize, usize) {
    if g < scale.big_series {
        return (scale.studies, 0, g);
    }
    let g = g - scale.big_series;
    let per_study = scale.series * scale.instances;
    (g / per_study, (g % per_study) / scale.instances, g % scale.instances)
}

// ---------------------------------------------------------------------------------------------
// PS3.10 encoding, by hand

/// Text in the character set of the instance (UTF-8 for ISO_IR 192 and the default repertoire,
/// which is ASCII here; Latin-1 for ISO_IR 100).
fn text(charset: Option<&str>, value: &str) -> Vec<u8> {
    match charset {
        Some("ISO_IR 100") => value.chars().map(|c| u8::try_from(c as u32).unwrap_or(b'?')).collect(),
        _ => value.as_bytes().to_vec(),
    }
}

fn instance(study: &Study, s: usize, k: usize) -> Vec<u8> {
    let series = &study.series[s];
    let class = sop_class(series.modality);
    let sop = format!("{}.{}", series.uid, k + 1);
    let charset = study.patient.charset;
    let mut out = file_meta(class, &sop, &format!("{ROOT}.0.1"), "KURA_QIDO_BENCH");
    let d = &mut out;
    if let Some(charset) = charset {
        element(d, 8, 5, b"CS", charset.as_bytes());
    }
    element(d, 8, 8, b"CS", b"ORIGINAL\\PRIMARY\\AXIAL");
    element(d, 8, 0x16, b"UI", class.as_bytes());
    element(d, 8, 0x18, b"UI", sop.as_bytes());
    element(d, 8, 0x20, b"DA", study.date.as_bytes());
    element(d, 8, 0x21, b"DA", study.date.as_bytes());
    element(d, 8, 0x23, b"DA", study.date.as_bytes());
    element(d, 8, 0x30, b"TM", study.time.as_bytes());
    element(d, 8, 0x31, b"TM", study.time.as_bytes());
    element(d, 8, 0x33, b"TM", study.time.as_bytes());
    element(d, 8, 0x50, b"SH", study.accession.as_bytes());
    element(d, 8, 0x60, b"CS", series.modality.as_bytes());
    element(d, 8, 0x70, b"LO", b"ACME Medical Systems");
    // Institution names in Japanese only where the instance is UTF-8.
    let institution = if study.institution.is_ascii() || charset == Some("ISO_IR 192") {
        study.institution
    } else {
        "Johoku Hospital"
    };
    element(d, 8, 0x80, b"LO", text(charset, institution).as_slice());
    element(d, 8, 0x90, b"PN", study.referring.as_bytes());
    element(d, 8, 0x1010, b"SH", format!("{}{:02}", series.modality, series.number % 7 + 1).as_bytes());
    element(d, 8, 0x1030, b"LO", study.description.as_bytes());
    element(d, 8, 0x103E, b"LO", series.description.as_bytes());
    element(d, 8, 0x1090, b"LO", b"Imager 3000");
    element(d, 0x10, 0x10, b"PN", &text(charset, &study.patient.name));
    element(d, 0x10, 0x20, b"LO", study.patient.id.as_bytes());
    element(d, 0x10, 0x30, b"DA", study.patient.birth_date.as_bytes());
    element(d, 0x10, 0x40, b"CS", study.patient.sex.as_bytes());
    element(d, 0x18, 0x15, b"CS", study.body_part.as_bytes());
    if matches!(series.modality, "CT" | "MR" | "PT") {
        element(d, 0x18, 0x50, b"DS", b"1.25");
    }
    element(d, 0x20, 0x0D, b"UI", study.uid.as_bytes());
    element(d, 0x20, 0x0E, b"UI", series.uid.as_bytes());
    element(d, 0x20, 0x10, b"SH", study.study_id.as_bytes());
    element(d, 0x20, 0x11, b"IS", series.number.to_string().as_bytes());
    element(d, 0x20, 0x13, b"IS", (k + 1).to_string().as_bytes());
    element(d, 0x20, 0x32, b"DS", format!("-250\\-250\\{:.2}", k as f64 * -1.25).as_bytes());
    element(d, 0x20, 0x37, b"DS", b"1\\0\\0\\0\\1\\0");
    element(d, 0x20, 0x52, b"UI", format!("{}.0", study.uid).as_bytes());
    let (rows, columns) = matrix(series.modality);
    element(d, 0x28, 0x02, b"US", &1u16.to_le_bytes());
    element(d, 0x28, 0x04, b"CS", b"MONOCHROME2");
    element(d, 0x28, 0x10, b"US", &rows.to_le_bytes());
    element(d, 0x28, 0x11, b"US", &columns.to_le_bytes());
    element(d, 0x28, 0x30, b"DS", b"0.7\\0.7");
    element(d, 0x28, 0x100, b"US", &16u16.to_le_bytes());
    element(d, 0x28, 0x101, b"US", &12u16.to_le_bytes());
    element(d, 0x28, 0x102, b"US", &11u16.to_le_bytes());
    element(d, 0x28, 0x103, b"US", &0u16.to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP

async fn get(client: &HttpClient, url: &str) -> Result<(u16, Bytes), String> {
    let request = http::Request::get(url)
        .header("accept", "application/dicom+json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(QUERY_TIMEOUT, exchange).await.map_err(|_| format!("timeout: {url}"))?
}

/// Percent-encodes a query value (`*` and unreserved characters stay as they are).
fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~*".contains(&byte) {
            out.push(byte as char);
        } else {
            write!(out, "%{byte:02X}").unwrap();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Loading

async fn load(client: &HttpClient, base: &str, scale: &Scale) -> (usize, f64, u64) {
    let clients: usize = env_or("KURA_BENCH_LOAD_CLIENTS", 4);
    let batch: usize = env_or("KURA_BENCH_BATCH", 250);
    let deadline = Duration::from_secs(env_or("KURA_BENCH_LOAD_TIMEOUT", 3600));
    let total = scale.total();
    let from: usize = env_or("KURA_BENCH_LOAD_FROM", 0);
    let next = Arc::new(AtomicUsize::new(from));
    let stored = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let url = format!("{base}/studies");
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, next, stored, bytes, stop, url, scale) =
            (client.clone(), next.clone(), stored.clone(), bytes.clone(), stop.clone(), url.clone(), scale.clone());
        tasks.push(tokio::spawn(async move {
            let mut current: Option<(usize, Study)> = None;
            while !stop.load(Ordering::Relaxed) {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= total {
                    break;
                }
                let parts: Vec<Vec<u8>> = (first..(first + batch).min(total))
                    .map(|g| {
                        let (i, s, k) = locate(&scale, g);
                        if current.as_ref().is_none_or(|(c, _)| *c != i) {
                            current = Some((i, study(&scale, i)));
                        }
                        instance(&current.as_ref().unwrap().1, s, k)
                    })
                    .collect();
                let n = parts.len();
                let size: usize = parts.iter().map(Vec::len).sum();
                if let Err(error) = stow(&client, &url, &parts, Duration::from_secs(600)).await {
                    panic!("loading instances {first}..{}: {error}", first + n);
                }
                stored.fetch_add(n, Ordering::Relaxed);
                bytes.fetch_add(size as u64, Ordering::Relaxed);
            }
        }));
    }
    let mut last = (Instant::now(), 0);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let done = stored.load(Ordering::Relaxed);
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        if started.elapsed() >= deadline && !stop.swap(true, Ordering::Relaxed) {
            eprintln!("load timeout reached at {done} instances; finishing the requests in flight");
        }
        if last.0.elapsed() >= Duration::from_secs(15) {
            let rate = (done - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprintln!(
                "  loaded {}/{total} ({:.0}%), {rate:.0} inst/s now, {:.0} s elapsed",
                from + done,
                (from + done) as f64 * 100.0 / total as f64,
                started.elapsed().as_secs_f64()
            );
            last = (Instant::now(), done);
        }
    }
    for task in tasks {
        task.await.expect("loader failed");
    }
    (stored.load(Ordering::Relaxed), started.elapsed().as_secs_f64(), bytes.load(Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// The query mix

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    AllStudies,
    NameWildcard,
    PatientId,
    DateRange,
    Modality,
    FuzzyName,
    SeriesOfStudy,
    BigSeries,
    StudyMetadata,
    SeriesMetadata,
}

const KINDS: [Kind; 10] = [
    Kind::AllStudies,
    Kind::NameWildcard,
    Kind::PatientId,
    Kind::DateRange,
    Kind::Modality,
    Kind::FuzzyName,
    Kind::SeriesOfStudy,
    Kind::BigSeries,
    Kind::StudyMetadata,
    Kind::SeriesMetadata,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AllStudies => "studies, all (limit=100)",
            Kind::NameWildcard => "studies, PatientName=abc* (limit=100)",
            Kind::PatientId => "studies, PatientID exact (limit=100)",
            Kind::DateRange => "studies, StudyDate one-year range (limit=100)",
            Kind::Modality => "studies, ModalitiesInStudy (limit=100)",
            Kind::FuzzyName => "studies, fuzzy misspelt family name (limit=100)",
            Kind::SeriesOfStudy => "series of one study",
            Kind::BigSeries => "instances of the 1,000-instance series, includefield=all",
            Kind::StudyMetadata => "study metadata (WADO-RS, a random regular study)",
            Kind::SeriesMetadata => "series metadata (WADO-RS, a random regular series)",
        }
    }

    /// The latency target of the issue in milliseconds: p50 for metadata (issue 16), else p95.
    fn target_ms(self) -> f64 {
        match self {
            Kind::BigSeries => 50.0,
            Kind::StudyMetadata => 2.0,
            Kind::SeriesMetadata => 1.0,
            _ => 10.0,
        }
    }

    /// The percentile the target is about.
    fn target_percentile(self) -> f64 {
        if matches!(self, Kind::StudyMetadata | Kind::SeriesMetadata) { 50.0 } else { 95.0 }
    }
}

/// Misspells a name: one letter in the middle replaced (an edit distance of one).
fn misspell(rng: &mut Rng, name: &str) -> String {
    let mut chars: Vec<char> = name.chars().collect();
    let at = 1 + rng.below(chars.len() - 2);
    let original = chars[at].to_ascii_lowercase();
    let replacement = loop {
        let c = (b'a' + rng.below(26) as u8) as char;
        if c != original {
            break c;
        }
    };
    chars[at] = replacement;
    chars.into_iter().collect()
}

/// The URL (below the DICOMweb root) of one query of `kind`, its values drawn from `rng`.
fn query(scale: &Scale, kind: Kind, rng: &mut Rng) -> String {
    let some_study = |rng: &mut Rng| study(scale, rng.below(scale.queryable.max(1)));
    match kind {
        Kind::AllStudies => "/studies?limit=100".into(),
        Kind::NameWildcard => {
            let family = some_study(rng).patient.family.to_lowercase();
            let prefix: String = family.chars().take(3).collect();
            format!("/studies?PatientName={}&limit=100", encode(&format!("{prefix}*")))
        }
        Kind::PatientId => format!("/studies?PatientID={}&limit=100", some_study(rng).patient.id),
        Kind::DateRange => {
            let year = 2005 + rng.below(21);
            format!("/studies?StudyDate={year}0101-{year}1231&limit=100")
        }
        Kind::Modality => format!("/studies?ModalitiesInStudy={}&limit=100", rng.pick(&MODALITIES)),
        Kind::FuzzyName => {
            let family = loop {
                let family = some_study(rng).patient.family;
                if family.len() >= 5 && family.chars().all(|c| c.is_ascii_alphabetic()) {
                    break family;
                }
            };
            format!("/studies?PatientName={}&fuzzymatching=true&limit=100", encode(&misspell(rng, &family)))
        }
        Kind::SeriesOfStudy => format!("/studies/{}/series", some_study(rng).uid),
        Kind::BigSeries => {
            let big = study(scale, scale.studies);
            format!("/studies/{}/series/{}/instances?includefield=all&limit=1000", big.uid, big.series[0].uid)
        }
        Kind::StudyMetadata => format!("/studies/{}/metadata", some_study(rng).uid),
        Kind::SeriesMetadata => {
            let study = some_study(rng);
            let series = &study.series[rng.below(study.series.len())];
            format!("/studies/{}/series/{}/metadata", study.uid, series.uid)
        }
    }
}

fn count_results(status: u16, body: &[u8]) -> usize {
    if status == 204 || body.is_empty() {
        return 0;
    }
    serde_json::from_slice::<Vec<serde_json::Value>>(body).map(|rows| rows.len()).unwrap_or(0)
}

struct Latencies {
    kind: Kind,
    millis: Vec<f64>,
    results: Vec<usize>,
    errors: usize,
    /// The slowest requests, slowest first (for `KURA_BENCH_SLOWEST`).
    slowest: Vec<(f64, String)>,
}

impl Latencies {
    fn new(kind: Kind) -> Latencies {
        Latencies { kind, millis: Vec::new(), results: Vec::new(), errors: 0, slowest: Vec::new() }
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.millis.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1]
    }

    fn mean_results(&self) -> f64 {
        self.results.iter().sum::<usize>() as f64 / self.results.len().max(1) as f64
    }
}

/// Runs one query and records its latency; `count` parses the answer to count its rows (after
/// the clock stopped; skipped under load, where the client shares the CPU with the server).
async fn timed(client: &HttpClient, base: &str, path: &str, into: &mut Latencies, count: bool) {
    let started = Instant::now();
    match get(client, &format!("{base}{path}")).await {
        Ok((status, body)) if status == 200 || status == 204 => {
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            into.millis.push(millis);
            into.slowest.push((millis, path.to_string()));
            into.slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
            into.slowest.truncate(3);
            if count {
                into.results.push(count_results(status, &body));
            }
        }
        Ok((status, body)) => {
            if into.errors == 0 {
                eprintln!("{path}: HTTP {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
            }
            into.errors += 1;
        }
        Err(error) => {
            if into.errors == 0 {
                eprintln!("{path}: {error}");
            }
            into.errors += 1;
        }
    }
}

fn kinds(scale: &Scale) -> Vec<Kind> {
    KINDS.iter().copied().filter(|k| *k != Kind::BigSeries || scale.big_series > 0).collect()
}

/// Each query kind `reps` times in a row, or as many times as fit in `budget`.
async fn single_client(
    client: &HttpClient,
    base: &str,
    scale: &Scale,
    reps: usize,
    budget: Duration,
) -> Vec<Latencies> {
    let mut out = Vec::new();
    for (n, kind) in kinds(scale).into_iter().enumerate() {
        let mut rng = Rng::new(scale.seed, 100 + n as u64, 0);
        let mut warmup = Latencies::new(kind);
        for _ in 0..5 {
            let path = query(scale, kind, &mut rng);
            timed(client, base, &path, &mut warmup, false).await;
        }
        let mut latencies = Latencies::new(kind);
        let started = Instant::now();
        for _ in 0..reps {
            if started.elapsed() >= budget {
                eprintln!("{}: time budget spent after {} repetitions", kind.name(), latencies.millis.len());
                break;
            }
            let path = query(scale, kind, &mut rng);
            timed(client, base, &path, &mut latencies, true).await;
        }
        out.push(latencies);
    }
    out
}

async fn concurrent(
    client: &HttpClient,
    base: &str,
    scale: &Scale,
    clients: usize,
    seconds: f64,
) -> (f64, Vec<Latencies>) {
    let kinds = kinds(scale);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, base, scale, kinds) = (client.clone(), base.to_string(), scale.clone(), kinds.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(scale.seed, 200, c as u64);
            let mut per_kind: Vec<Latencies> = kinds.iter().map(|k| Latencies::new(*k)).collect();
            let mut n = c;
            while Instant::now() < deadline {
                let slot = n % kinds.len();
                let path = query(&scale, kinds[slot], &mut rng);
                timed(&client, &base, &path, &mut per_kind[slot], false).await;
                n += 1;
            }
            per_kind
        }));
    }
    let mut merged: Vec<Latencies> = kinds.iter().map(|k| Latencies::new(*k)).collect();
    for task in tasks {
        for (into, from) in merged.iter_mut().zip(task.await.expect("client failed")) {
            into.millis.extend(from.millis);
            into.results.extend(from.results);
            into.errors += from.errors;
        }
    }
    (started.elapsed().as_secs_f64(), merged)
}

// ---------------------------------------------------------------------------------------------
// The server under test, and its footprint

/// Allocated bytes of a file or directory tree (what `du` counts).
fn du(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    let mut total = meta.blocks() * 512;
    if meta.is_dir()
        && let Ok(entries) = std::fs::read_dir(path)
    {
        for entry in entries.flatten() {
            total += du(&entry.path());
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn main() {
    let mut scale = Scale {
        studies: env_or("KURA_BENCH_STUDIES", 2000),
        series: env_or("KURA_BENCH_SERIES", 5),
        instances: env_or("KURA_BENCH_INSTANCES", 10),
        big_series: env_or("KURA_BENCH_BIG_SERIES", 1000),
        seed: env_or("KURA_BENCH_SEED", 1),
        queryable: 0,
    };
    scale.queryable = scale.complete_studies(env_or("KURA_BENCH_LOADED", scale.total()));
    assert!(scale.studies > 0 && scale.series > 0 && scale.instances > 0, "the scale must not be empty");
    let mode: String = env_or("KURA_BENCH_MODE", "all".to_string());
    let label: String = env_or("KURA_BENCH_LABEL", "kura".to_string());
    let reps: usize = env_or("KURA_BENCH_REPS", 200);
    let clients: usize = env_or("KURA_BENCH_CLIENTS", 8);
    let seconds: f64 = env_or("KURA_BENCH_SECONDS", 20.0);
    let budget = Duration::from_secs_f64(env_or("KURA_BENCH_KIND_BUDGET", 120.0));
    let external = std::env::var("KURA_BENCH_URL").ok().map(|u| u.trim_end_matches('/').to_string());

    let holder = tempfile::tempdir().unwrap();
    let data: PathBuf = std::env::var("KURA_BENCH_DATA").map(PathBuf::from).unwrap_or(holder.path().join("data"));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let child = match &external {
        Some(_) => None,
        None => Some(runtime.block_on(KuraChild::start(&data))),
    };
    let base = external.clone().unwrap_or_else(|| child.as_ref().unwrap().base());
    let pid: Option<u32> = std::env::var("KURA_BENCH_PID")
        .ok()
        .and_then(|p| p.parse().ok())
        .or_else(|| child.as_ref().map(|c| c.child.id()));
    let index_path = std::env::var("KURA_BENCH_INDEX_PATH")
        .map(PathBuf::from)
        .ok()
        .or_else(|| child.as_ref().map(|_| data.join("index")));
    let data_path =
        std::env::var("KURA_BENCH_DATA_PATH").map(PathBuf::from).ok().or_else(|| child.as_ref().map(|_| data.clone()));

    let client: HttpClient =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build(HttpConnector::new());
    let sample = instance(&study(&scale, 0), 0, 0);
    println!(
        "qido_load [{label}] at {base}: {} studies x {} series x {} instances + one series of {} = {} instances \
         (seed {}, {} bytes per instance, metadata only)",
        scale.studies,
        scale.series,
        scale.instances,
        scale.big_series,
        scale.total(),
        scale.seed,
        sample.len()
    );

    let mut loaded = None;
    if mode == "all" || mode == "load" {
        let (n, secs, bytes) = runtime.block_on(load(&client, &base, &scale));
        println!(
            "\ningest: {n} instances ({}) in {secs:.1} s = {:.0} instances/s ({} per STOW-RS request, {} concurrent)",
            mib(bytes),
            n as f64 / secs,
            env_or("KURA_BENCH_BATCH", 250usize),
            env_or("KURA_BENCH_LOAD_CLIENTS", 4usize)
        );
        let end = env_or("KURA_BENCH_LOAD_FROM", 0usize) + n;
        loaded = Some(end);
        if end < scale.total() {
            scale.queryable = scale.complete_studies(end);
            println!(
                "(load cut short: queries draw from the {} complete studies; resume with KURA_BENCH_LOAD_FROM={end}, \
                 query with KURA_BENCH_LOADED={end})",
                scale.queryable
            );
        }
        // Let the index checkpoint what the load left in its in-memory tier.
        std::thread::sleep(Duration::from_secs(3));
    }

    if mode == "all" || mode == "query" {
        let single = runtime.block_on(single_client(&client, &base, &scale, reps, budget));
        println!("\n### [{label}] QIDO-RS latency, 1 client, up to {reps} repetitions each (varying values)\n");
        println!("| query | n | mean results | p50 ms | p95 ms | max ms | errors | target |");
        println!("|---|---:|---:|---:|---:|---:|---:|---|");
        for l in &single {
            let p = l.kind.target_percentile();
            println!(
                "| {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {} | p{p} ≤ {} ms {} |",
                l.kind.name(),
                l.millis.len(),
                l.mean_results(),
                l.percentile(50.0),
                l.percentile(95.0),
                l.percentile(100.0),
                l.errors,
                l.kind.target_ms(),
                if l.percentile(p) <= l.kind.target_ms() { "met" } else { "**missed**" }
            );
        }
        if env_or("KURA_BENCH_SLOWEST", false) {
            println!("\nslowest requests (1 client):");
            for l in &single {
                for (millis, path) in &l.slowest {
                    println!("  {millis:8.2} ms  {path}");
                }
            }
        }
        let (elapsed, merged) = runtime.block_on(concurrent(&client, &base, &scale, clients, seconds));
        let done: usize = merged.iter().map(|l| l.millis.len()).sum();
        let errors: usize = merged.iter().map(|l| l.errors).sum();
        println!(
            "\n### [{label}] Throughput, {clients} concurrent clients, the same mix round-robin for {elapsed:.0} s\n"
        );
        println!("{done} requests, {:.1} req/s, {errors} errors\n", done as f64 / elapsed);
        println!("| query (under load) | requests | p50 ms | p95 ms | max ms |");
        println!("|---|---:|---:|---:|---:|");
        for l in &merged {
            println!(
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                l.kind.name(),
                l.millis.len(),
                l.percentile(50.0),
                l.percentile(95.0),
                l.percentile(100.0)
            );
        }
    }

    println!("\n### [{label}] Footprint\n");
    if let Some(path) = &index_path {
        println!("- index on disk ({}): {}", path.display(), mib(du(path)));
    }
    if let Some(path) = &data_path {
        let total = du(path);
        let n = loaded.unwrap_or(env_or("KURA_BENCH_LOADED", scale.total())).max(1);
        println!(
            "- all data on disk ({}): {}, {:.0} bytes per instance",
            path.display(),
            mib(total),
            total as f64 / n as f64
        );
    }
    if let Some(pid) = pid {
        let rss = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
        let hwm = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
        println!("- server RSS (pid {pid}): VmRSS {} , VmHWM {}", mib(rss * 1024), mib(hwm * 1024));
    }
    if let Some(child) = child {
        child.stop();
    }
    drop(runtime);
}
