"""Retrieve Capabilities (PS3.18 §8.9, Annex H) read by a generic XML parser: the WADL is
well-formed, in the WADL namespace, rooted at the service's base URL, and every resource it
describes answers its GET methods over real HTTP (none is 404 or 405), with the media types the
description lists."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import requests

from kura_interop import CT_SMALL, sample_bytes, stow, from_bytes

WADL = "{http://wadl.dev.java.net/2009/02}"


WORKITEM_UID = "1.2.826.0.1.3680043.10.1245.999.1"
# The attributes a UPS N-CREATE needs (conformance/STATEMENT.md §13.3).
WORKITEM = {
    "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
    "00741200": {"vr": "CS", "Value": ["MEDIUM"]},
    "00741204": {"vr": "LO", "Value": ["capabilities check"]},
    "00404005": {"vr": "DT", "Value": ["20261202120000"]},
    "00404041": {"vr": "CS", "Value": ["READY"]},
}


def _resources(element, prefix=""):
    """(path, resource element) for every resource of the tree, paths joined with '/'."""
    for resource in element.findall(f"{WADL}resource"):
        path = f"{prefix}/{resource.get('path')}"
        yield path, resource
        yield from _resources(resource, path)


def test_every_described_resource_answers(kura):
    data = sample_bytes(CT_SMALL)
    assert stow(kura.url, [data]).status_code == 200
    ds = from_bytes(data)
    values = {
        "{StudyInstanceUID}": ds.StudyInstanceUID,
        "{SeriesInstanceUID}": ds.SeriesInstanceUID,
        "{SOPInstanceUID}": ds.SOPInstanceUID,
        "{frameList}": "1",
        "{tag}": "7FE00010",
        "{WorkitemUID}": WORKITEM_UID,
        "{AETitle}": "CAPS_READER",
    }
    created = requests.post(f"{kura.url}/workitems?{WORKITEM_UID}", json=WORKITEM,
                            headers={"Content-Type": "application/dicom+json"}, timeout=30)
    assert created.status_code == 201, created.text

    response = requests.options(f"{kura.url}/", headers={"Accept": "application/vnd.sun.wadl+xml"},
                                timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/vnd.sun.wadl+xml"
    root = ET.fromstring(response.content)
    assert root.tag == f"{WADL}application"
    [resources] = root.findall(f"{WADL}resources")
    assert resources.get("base") == f"{kura.url}/"

    described = list(_resources(resources))
    # 22 resources of the studies tree and the three search roots, 7 of UPS-RS (PS3.18 §8.9).
    assert len(described) == 29
    ids = set()
    for template, resource in described:
        path = template
        for name, value in values.items():
            path = path.replace(name, value)
        for method in resource.findall(f"{WADL}method"):
            ids.add(method.get("id"))
            # The notification connection is a WebSocket upgrade (§8.10), driven by test_ups.py.
            if method.get("name") != "GET" or method.get("id") == "OpenNotificationConnection":
                continue
            accept = [option.get("value") for option in
                      method.findall(f"{WADL}request/{WADL}param[@name='Accept']/{WADL}option")]
            assert accept, f"{method.get('id')} lists its media types"
            reply = requests.get(f"{kura.url}{path}", headers={"Accept": accept[0]}, timeout=30)
            assert reply.status_code == 200, f"{method.get('id')} GET {path}: {reply.status_code}"
            offered = [r.get("mediaType") for r in
                       method.findall(f"{WADL}response[@status='200']/{WADL}representation")]
            essence = reply.headers["Content-Type"].split(";")[0]
            assert any(o.split(";")[0] == essence for o in offered), (path, essence, offered)
    assert {"SearchForStudies", "StoreInstances", "RetrieveFrames", "RetrieveSeriesMetadata",
            "SearchForWorkitems", "RetrieveWorkitem", "OpenNotificationConnection"} <= ids
