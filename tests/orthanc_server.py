"""A real Orthanc (Debian package) on loopback, with a config and storage written for one test, stopped afterwards;
shared by the DICOM node's tests and its benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import requests

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"  # Debian's orthanc-dicomweb


class Orthanc:
    def __init__(self, folder: Path, http_port: int, dicom_port: int, modalities: dict, dicomweb: bool = False):
        self.folder, self.http_port, self.dicom_port = Path(folder), http_port, dicom_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "synthetic-contrast-test", "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"), "HttpPort": http_port, "DicomPort": dicom_port,
            "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomModalities": modalities, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
            "Plugins": [DICOMWEB_PLUGIN] if dicomweb else [],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self.process = None

    @staticmethod
    def executable() -> str | None:
        return shutil.which("Orthanc")

    def start(self) -> "Orthanc":
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([self.executable(), str(self.folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not start; see {self.folder / 'orthanc.log'}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def get(self, path: str):
        response = requests.get(self.url + path, timeout=10)
        response.raise_for_status()
        return response.json()

    def get_bytes(self, path: str) -> bytes:
        response = requests.get(self.url + path, timeout=10)
        response.raise_for_status()
        return response.content

    def post(self, path: str, data=None, json_body=None):
        response = requests.post(self.url + path, data=data, json=json_body, timeout=120)
        response.raise_for_status()
        return response.json() if response.content else None

    def upload(self, files) -> str:
        """Upload DICOM files; returns Orthanc's id of their series."""
        series = None
        for path in files:
            series = self.post("/instances", data=Path(path).read_bytes())["ParentSeries"]
        return series

    def series_with_description(self, prefix: str) -> list[dict]:
        found = []
        for sid in self.get("/series"):
            info = self.get(f"/series/{sid}")
            if info["MainDicomTags"].get("SeriesDescription", "").startswith(prefix):
                found.append(info)
        return found

    def wait_for_series(self, prefix: str, instances: int, timeout: float) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for info in self.series_with_description(prefix):
                if len(info["Instances"]) >= instances:
                    return info
            time.sleep(0.5)
        raise TimeoutError(f"no series '{prefix}...' with {instances} instances in Orthanc after {timeout} s")
