"""HTTP caching of retrieved content (issue 19), driven with plain `requests` as a browser would:
ETag on instances, series, frames, rendered images and thumbnails, 304 on If-None-Match,
Cache-Control private (immutable for an instance, no-cache for a series), and a series tag that
changes when an instance is added.
"""

from __future__ import annotations

import requests

from kura_interop import ACCEPT_ANY_TS, Patient, make_image, stow, to_bytes, uid

PATIENT = Patient("Cache^Test", "CACHE-1")
IMMUTABLE = "private, max-age=86400, immutable"
REVALIDATE = "private, no-cache"


def image(number: int):
    study = uid("cache-study")
    return make_image(
        patient=PATIENT,
        study_uid=study,
        series_uid=uid("cache-series", study),
        instance_number=number,
        rows=32,
        cols=32,
        frames=2,
    )


def cached(url: str, accept: str, cache_control: str) -> str:
    first = requests.get(url, headers={"Accept": accept}, timeout=30)
    assert first.status_code == 200, (url, first.text)
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    assert first.headers["Cache-Control"] == cache_control
    assert requests.get(url, headers={"Accept": accept}, timeout=30).headers["ETag"] == etag
    again = requests.get(url, headers={"Accept": accept, "If-None-Match": etag}, timeout=30)
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag
    head = requests.head(url, headers={"Accept": accept}, timeout=30)
    assert head.status_code == 200 and head.headers["ETag"] == etag
    return etag


def test_etags_304_and_cache_control(kura):
    base = kura.url
    first = image(1)
    assert stow(base, [to_bytes(first)]).status_code == 200
    instance = f"{base}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances/{first.SOPInstanceUID}"
    series = f"{base}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    tags = [
        cached(instance, "application/dicom; transfer-syntax=*", IMMUTABLE),
        cached(instance, ACCEPT_ANY_TS, IMMUTABLE),
        cached(f"{instance}/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=*', IMMUTABLE),
        cached(f"{instance}/frames/2", 'multipart/related; type="application/octet-stream"; transfer-syntax=*', IMMUTABLE),
        cached(f"{instance}/frames/1/rendered", "image/jpeg", IMMUTABLE),
        cached(f"{instance}/frames/1/rendered", "image/png", IMMUTABLE),
        cached(f"{instance}/thumbnail", "image/jpeg", IMMUTABLE),
    ]
    assert len(set(tags)) == len(tags), tags
    series_tag = cached(series, ACCEPT_ANY_TS, REVALIDATE)

    assert stow(base, [to_bytes(image(2))]).status_code == 200
    after = requests.get(series, headers={"Accept": ACCEPT_ANY_TS, "If-None-Match": series_tag}, timeout=30)
    assert after.status_code == 200
    assert after.headers["ETag"] != series_tag
    unchanged = requests.get(
        instance, headers={"Accept": "application/dicom; transfer-syntax=*", "If-None-Match": tags[0]}, timeout=30
    )
    assert unchanged.status_code == 304
