"""UPS-RS and its WebSocket events driven by independent clients: `requests` for the Worklist
transactions, the `websockets` package for the notification connections (PS3.18 §8.10), and
dicomweb-client for STOW-RS, WADO-RS and QIDO-RS.

The report round trip of README.md ("Remote reading: the report round trip"): a hospital
schedules a reading workitem whose Input Information Sequence references a stored study; the
reader subscribes, claims it, stores a Structured Report, an encapsulated PDF and a Grayscale
Softcopy Presentation State (made with pydicom), lists them in the Output Information Sequence
and completes the workitem; the hospital's subscriber hears of it within a second, and the
report objects are retrievable and searchable under the original study.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import time

import pydicom
import pytest
import requests
import websockets
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

from kura_interop import Patient, make_image, uid

JSON = "application/dicom+json"
GLOBAL = "1.2.840.10008.5.1.4.34.5"
FILTERED = "1.2.840.10008.5.1.4.34.5.1"
UPS_PUSH = "1.2.840.10008.5.1.4.34.6.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
PATIENT = Patient("Consult^Case", "UPS-001", "19750505", "F")


class Subscriber(threading.Thread):
    """A notification connection held by the `websockets` client in a thread of its own; every
    text frame is parsed as DICOM JSON and queued with the time it arrived."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.events: queue.Queue = queue.Queue()
        self.ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stopping: asyncio.Event | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        try:
            async with websockets.connect(self.url) as socket:
                self.ready.set()
                receiver = asyncio.ensure_future(self._receive(socket))
                await self._stopping.wait()
                receiver.cancel()
        except BaseException as error:  # reported to the test
            self.error = error
            self.ready.set()

    async def _receive(self, socket) -> None:
        async for message in socket:
            self.events.put((time.monotonic(), json.loads(message)))

    def start_connected(self) -> "Subscriber":
        self.start()
        assert self.ready.wait(10), "the WebSocket did not open"
        assert self.error is None, f"WebSocket: {self.error!r}"
        return self

    def close(self) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(10)

    def next_event(self, timeout: float = 5.0) -> tuple[float, dict]:
        return self.events.get(timeout=timeout)

    def wait_for(self, predicate, timeout: float = 5.0) -> tuple[float, dict]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "the expected event did not arrive"
            arrived, event = self.events.get(timeout=remaining)
            if predicate(event):
                return arrived, event


def first(event: dict, tag: str):
    return (event.get(tag, {}).get("Value") or [None])[0]


def is_state(workitem: str, state: str):
    return lambda e: first(e, "00001002") == 1 and first(e, "00001000") == workitem and first(e, "00741000") == state


def code(value: str, scheme: str, meaning: str) -> dict:
    return {
        "00080100": {"vr": "SH", "Value": [value]},
        "00080102": {"vr": "SH", "Value": [scheme]},
        "00080104": {"vr": "LO", "Value": [meaning]},
    }


def subscribe(base: str, target: str, ae: str, **params) -> str:
    response = requests.post(f"{base}/workitems/{target}/subscribers/{ae}", params=params, timeout=10)
    assert response.status_code == 201, response.text
    location = response.headers["Content-Location"]
    assert location.startswith("ws://") and location.endswith(f"/subscribers/{ae}"), location
    return location


def _file(sop_class: str, sop_uid: str, study_uid: str, series_uid: str, modality: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0
    meta.FileMetaInformationVersion = b"\0\1"
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = modality
    ds.PatientName = PATIENT.name
    ds.PatientID = PATIENT.id
    ds.PatientBirthDate = PATIENT.birth_date
    ds.PatientSex = PATIENT.sex
    ds.StudyDate = "20260301"
    ds.StudyTime = "101010"
    ds.AccessionNumber = "UPS-ACC"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.SeriesNumber = 90
    ds.InstanceNumber = 1
    ds.ContentDate = "20260302"
    ds.ContentTime = "090000"
    return ds


def structured_report(study_uid: str, image) -> FileDataset:
    ds = _file(BASIC_TEXT_SR, uid("ups-sr"), study_uid, uid("ups-sr-series"), "SR")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18782-3", "LN", "Radiology Study observation")])
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = DicomSequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = "Finding 1: 8 mm nodule, right upper lobe (arrow 1 on image 1)."
    ds.ContentSequence = DicomSequence([finding])
    evidence = Dataset()
    evidence.StudyInstanceUID = study_uid
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series.ReferencedSOPSequence = DicomSequence([ref])
    evidence.ReferencedSeriesSequence = DicomSequence([series])
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence([evidence])
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def encapsulated_pdf(study_uid: str) -> FileDataset:
    ds = _file(ENCAPSULATED_PDF, uid("ups-pdf"), study_uid, uid("ups-pdf-series"), "DOC")
    pdf = (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    if len(pdf) % 2:
        pdf += b"\0"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.DocumentTitle = "Consultation report"
    ds.BurnedInAnnotation = "NO"
    ds.ConceptNameCodeSequence = DicomSequence([_code("18748-4", "LN", "Diagnostic imaging report")])
    ds.EncapsulatedDocument = pdf
    return ds


def presentation_state(study_uid: str, image) -> FileDataset:
    """A GSPS with an arrow (a polyline) and the numbered finding's label on the image."""
    ds = _file(GSPS, uid("ups-gsps"), study_uid, uid("ups-gsps-series"), "PR")
    ds.ContentLabel = "FINDINGS"
    ds.ContentDescription = "Arrow and number of finding 1"
    ds.ContentCreatorName = "Reader^Remote"
    ds.PresentationCreationDate = "20260302"
    ds.PresentationCreationTime = "090000"
    series = Dataset()
    series.SeriesInstanceUID = image.SeriesInstanceUID
    ref = Dataset()
    ref.ReferencedSOPClassUID = image.SOPClassUID
    ref.ReferencedSOPInstanceUID = image.SOPInstanceUID
    series.ReferencedImageSequence = DicomSequence([ref])
    ds.ReferencedSeriesSequence = DicomSequence([series])
    layer = Dataset()
    layer.GraphicLayer = "FINDINGS"
    layer.GraphicLayerOrder = 1
    ds.GraphicLayerSequence = DicomSequence([layer])
    annotation = Dataset()
    annotation.ReferencedImageSequence = DicomSequence([ref])
    annotation.GraphicLayer = "FINDINGS"
    arrow = Dataset()
    arrow.GraphicAnnotationUnits = "PIXEL"
    arrow.GraphicDimensions = 2
    arrow.NumberOfGraphicPoints = 2
    arrow.GraphicData = [10.0, 10.0, 30.0, 30.0]
    arrow.GraphicType = "POLYLINE"
    arrow.GraphicFilled = "N"
    annotation.GraphicObjectSequence = DicomSequence([arrow])
    label = Dataset()
    label.AnchorPointAnnotationUnits = "PIXEL"
    label.UnformattedTextValue = "1"
    label.AnchorPoint = [8.0, 8.0]
    label.AnchorPointVisibility = "Y"
    annotation.TextObjectSequence = DicomSequence([label])
    ds.GraphicAnnotationSequence = DicomSequence([annotation])
    ds.PresentationLUTShape = "IDENTITY"
    return ds


def reference(ds: Dataset) -> dict:
    return {
        "00081150": {"vr": "UI", "Value": [ds.SOPClassUID]},
        "00081155": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
    }


def test_report_round_trip(kura, client: DICOMwebClient):
    base = kura.url
    study_uid = uid("ups-study")
    series_uid = uid("ups-series")
    images = [
        make_image(patient=PATIENT, study_uid=study_uid, series_uid=series_uid, instance_number=n)
        for n in (1, 2)
    ]
    client.store_instances(images)

    # The hospital watches the whole worklist.
    hospital = Subscriber(subscribe(base, GLOBAL, "HOSPITAL")).start_connected()
    # A second hospital system watches only HIGH priority readings of this study.
    urgent = Subscriber(
        subscribe(base, FILTERED, "URGENT", filter=f"ScheduledProcedureStepPriority=HIGH,"
                                                   f"InputInformationSequence.StudyInstanceUID={study_uid}")
    ).start_connected()
    try:
        # 1. The hospital schedules the reading, naming the study and the reader.
        workitem = uid("ups-workitem")
        item = {
            "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
            "00741200": {"vr": "CS", "Value": ["HIGH"]},
            "00741204": {"vr": "LO", "Value": ["Second opinion: CT chest"]},
            "00404005": {"vr": "DT", "Value": ["20260302080000"]},
            "00404041": {"vr": "CS", "Value": ["READY"]},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": PATIENT.name}]},
            "00100020": {"vr": "LO", "Value": [PATIENT.id]},
            "00404018": {"vr": "SQ", "Value": [code("READ", "99KURA", "Remote reading")]},
            "00404034": {"vr": "SQ", "Value": [{
                "00404009": {"vr": "SQ", "Value": [code("RDR-7", "99KURA", "Reader, Remote")]},
                "00404036": {"vr": "LO", "Value": ["Remote Reading Centre"]},
            }]},
            "00404021": {"vr": "SQ", "Value": [{
                "0020000D": {"vr": "UI", "Value": [study_uid]},
                "0020000E": {"vr": "UI", "Value": [series_uid]},
                "00081199": {"vr": "SQ", "Value": [reference(image) for image in images]},
            }]},
        }
        created = requests.post(f"{base}/workitems", params={workitem: ""}, json=item,
                                headers={"Content-Type": JSON}, timeout=10)
        assert created.status_code == 201, created.text
        assert created.headers["Location"] == f"{base}/workitems/{workitem}"
        _, scheduled = hospital.wait_for(is_state(workitem, "SCHEDULED"))
        assert first(scheduled, "00000002") == UPS_PUSH
        _, assigned = hospital.wait_for(lambda e: first(e, "00001002") == 5)
        assert first(assigned, "00404009")["00080100"]["Value"] == ["RDR-7"]
        urgent.wait_for(is_state(workitem, "SCHEDULED"))

        # 2. The reader finds it by the study it references, subscribes and claims it.
        found = requests.get(f"{base}/workitems", params={
            "InputInformationSequence.StudyInstanceUID": study_uid, "ProcedureStepState": "SCHEDULED",
        }, headers={"Accept": JSON}, timeout=10)
        assert found.status_code == 200, found.text
        assert [first(w, "00080018") for w in found.json()] == [workitem]
        reader = Subscriber(subscribe(base, workitem, "READER")).start_connected()
        try:
            reader.wait_for(is_state(workitem, "SCHEDULED"))
            transaction = generate_uid()
            claim = requests.put(f"{base}/workitems/{workitem}/state", json={
                "00081195": {"vr": "UI", "Value": [transaction]},
                "00741000": {"vr": "CS", "Value": ["IN PROGRESS"]},
            }, headers={"Content-Type": JSON}, timeout=10)
            assert claim.status_code == 200, claim.text
            hospital.wait_for(is_state(workitem, "IN PROGRESS"))
            reader.wait_for(is_state(workitem, "IN PROGRESS"))
            retrieved = requests.get(f"{base}/workitems/{workitem}", headers={"Accept": JSON}, timeout=10)
            assert transaction not in retrieved.text, "the Transaction UID is never disclosed"

            # 3. The reader stores the report: SR, PDF and GSPS, in the original study.
            report = [structured_report(study_uid, images[0]), encapsulated_pdf(study_uid),
                      presentation_state(study_uid, images[0])]
            client.store_instances(report)

            # 4. Progress, then the outputs in the performed procedure, then COMPLETED.
            progress = requests.post(f"{base}/workitems/{workitem}", params={"transaction-uid": transaction}, json={
                "00741002": {"vr": "SQ", "Value": [{"00741004": {"vr": "DS", "Value": [90]}}]},
            }, headers={"Content-Type": JSON}, timeout=10)
            assert progress.status_code == 200, progress.text
            _, progress_event = hospital.wait_for(lambda e: first(e, "00001002") == 3)
            assert first(progress_event, "00741002")["00741004"]["Value"] == [90]
            outputs = {
                "00741216": {"vr": "SQ", "Value": [{
                    "00404050": {"vr": "DT", "Value": ["20260302090000"]},
                    "00404051": {"vr": "DT", "Value": ["20260302093000"]},
                    "00404033": {"vr": "SQ", "Value": [{
                        "0020000D": {"vr": "UI", "Value": [study_uid]},
                        "00081199": {"vr": "SQ", "Value": [reference(ds) for ds in report]},
                    }]},
                }]},
            }
            updated = requests.post(f"{base}/workitems/{workitem}", params={"transaction-uid": transaction},
                                    json=outputs, headers={"Content-Type": JSON}, timeout=10)
            assert updated.status_code == 200, updated.text
            complete = requests.put(f"{base}/workitems/{workitem}/state", json={
                "00081195": {"vr": "UI", "Value": [transaction]},
                "00741000": {"vr": "CS", "Value": ["COMPLETED"]},
            }, headers={"Content-Type": JSON}, timeout=10)
            completed_at = time.monotonic()
            assert complete.status_code == 200, complete.text
        finally:
            reader.close()

        # 5. The hospital hears of it within a second.
        arrived, completed = hospital.wait_for(is_state(workitem, "COMPLETED"), timeout=5)
        assert arrived - completed_at < 1.0, f"the completion event took {arrived - completed_at:.3f} s"
        urgent.wait_for(is_state(workitem, "COMPLETED"))

        # 6. The report objects: in the workitem, retrievable, and under the original study.
        final = requests.get(f"{base}/workitems/{workitem}", headers={"Accept": JSON}, timeout=10).json()[0]
        listed = final["00741216"]["Value"][0]["00404033"]["Value"][0]["00081199"]["Value"]
        assert {first(r, "00081155") for r in listed} == {ds.SOPInstanceUID for ds in report}
        for ds in report:
            retrieved = client.retrieve_instance(study_uid, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            assert retrieved.SOPClassUID == ds.SOPClassUID
        pdf = client.retrieve_instance(study_uid, report[1].SeriesInstanceUID, report[1].SOPInstanceUID)
        assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF-1.4")
        gsps = client.retrieve_instance(study_uid, report[2].SeriesInstanceUID, report[2].SOPInstanceUID)
        assert gsps.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue == "1"
        instances = client.search_for_instances(study_instance_uid=study_uid)
        found_uids = {first(row, "00080018") for row in instances}
        assert {ds.SOPInstanceUID for ds in report} | {image.SOPInstanceUID for image in images} == found_uids
        series = client.search_for_series(study_instance_uid=study_uid)
        assert {first(row, "00080060") for row in series} == {"CT", "SR", "DOC", "PR"}
    finally:
        hospital.close()
        urgent.close()


def test_state_errors_seen_by_a_plain_http_client(kura):
    """The Warning texts of PS3.18 §11.7.3.2 as a client other than ours reads them."""
    base = kura.url
    workitem = uid("ups-errors")
    item = {
        "00741000": {"vr": "CS", "Value": ["SCHEDULED"]},
        "00741200": {"vr": "CS", "Value": ["LOW"]},
        "00741204": {"vr": "LO", "Value": ["errors"]},
        "00404005": {"vr": "DT", "Value": ["20260302080000"]},
        "00404041": {"vr": "CS", "Value": ["READY"]},
    }
    assert requests.post(f"{base}/workitems?{workitem}", json=item, timeout=10).status_code == 201
    assert requests.post(f"{base}/workitems?{workitem}", json=item, timeout=10).status_code == 409
    missing = requests.put(f"{base}/workitems/{workitem}/state",
                           json={"00741000": {"vr": "CS", "Value": ["IN PROGRESS"]}}, timeout=10)
    assert missing.status_code == 400
    assert "The Transaction UID is missing." in missing.headers["Warning"]
    early = requests.put(f"{base}/workitems/{workitem}/state", json={
        "00081195": {"vr": "UI", "Value": ["2.25.1"]}, "00741000": {"vr": "CS", "Value": ["COMPLETED"]},
    }, timeout=10)
    assert early.status_code == 400
    assert "inconsistent with the state of the UPS Instance" in early.headers["Warning"]
