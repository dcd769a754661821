"""vmunet serve: the HTTP API through FastAPI's TestClient, a live server on 127.0.0.1, and the page in headless
Chromium. The answers are compared with what ``vmunet predict`` (``predict_paths``) writes for the same file."""

import base64
import io
import json
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="vmunet serve needs the 'serve' extra")
pytest.importorskip("multipart", reason="vmunet serve needs the 'serve' extra")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

with warnings.catch_warnings():  # starlette's note that it prefers httpx2 to httpx
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

from builders import HANG_LIMIT_S, blob_image  # noqa: E402
from test_predict import make_run, write_nifti  # noqa: E402
from vmunet.cli import main  # noqa: E402
from vmunet.predict import predict_paths  # noqa: E402
from vmunet.serve import create_app, make_server, serve  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # starlette's note on httpx vs httpx2

TOKEN = "s3cret-token"


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def blob_png(seed: int, height: int, width: int) -> bytes:
    return png_bytes(blob_image(np.random.default_rng(seed), height, width)[0])


def predicted_file(run: Path, tmp: Path, name: str, data: bytes) -> Path:
    """What ``vmunet predict`` writes for ``data`` saved as ``name``."""
    folder = tmp / f"in-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / name).write_bytes(data)
    summary = predict_paths(run, [folder / name], tmp / f"out-{folder.name}", device="cpu", report=lambda _: None)
    assert summary.exit_code == 0, summary.failed
    return summary.written[0]


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve-binary"))


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("serve-volume"), num_classes=3, input_channels=1,
                    normalization="zscore", dataset="nifti")


@pytest.fixture(scope="module")
def uploads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-uploads")


def local_client(app) -> TestClient:
    """A TestClient that sends Host: 127.0.0.1 (TestClient's own "testserver" is not a loopback name)."""
    return TestClient(app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(binary_run, uploads) -> TestClient:
    return local_client(create_app(binary_run, device="cpu", max_upload_mb=0.05, temp_dir=uploads))


def post(client, name: str, data: bytes, **params):
    return client.post("/predict", params=params, files={"file": (name, data, "application/octet-stream")})


def assert_one_line(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    assert "vmunet-serve-" not in detail, f"the temporary path leaks into the message: {detail}"
    for word in words:
        assert word in detail, detail
    return detail


def test_health_info_and_the_page(client):
    assert client.get("/health").json() == {"status": "ok", "token_required": False}
    info = client.get("/info").json()
    assert info["num_classes"] == 1 and info["label_names"] == ["background", "lesion"] and info["kind"] == "images"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="canvas"' in page.text and "predict?" in page.text
    assert "http://" not in page.text and "https://" not in page.text, "the page must fetch nothing from elsewhere"
    assert client.get("/openapi.json").json()["paths"]["/predict"]["post"]


@pytest.mark.parametrize("name, make", [("rgb.png", lambda: blob_png(1, 50, 70)),
                                        ("grey16.png", lambda: png_bytes(np.random.default_rng(2).integers(
                                            0, 65535, (40, 48), dtype=np.uint16))),
                                        ("photo.jpg", lambda: _jpeg(blob_image(np.random.default_rng(3), 45, 33)[0]))])
def test_png_mask_is_what_predict_writes(client, binary_run, tmp_path, name, make):
    data = make()
    response = post(client, name, data)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert f'filename="{Path(name).stem}_mask.png"' in response.headers["content-disposition"]
    expected = predicted_file(binary_run, tmp_path, name, data)
    served = np.asarray(Image.open(io.BytesIO(response.content)))
    written = np.asarray(Image.open(expected))
    assert served.shape == written.shape == Image.open(io.BytesIO(data)).size[::-1]
    np.testing.assert_array_equal(served, written)
    assert response.content == expected.read_bytes()
    if name == "rgb.png":  # the comparison means something: the mask has both values, 0/255 as predict writes
        assert set(np.unique(served)) == {0, 255}


def _jpeg(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_json_statistics_areas_and_preview(client, binary_run, tmp_path):
    data = blob_png(4, 48, 64)
    mask = np.asarray(Image.open(predicted_file(binary_run, tmp_path, "b.png", data))) // 255
    counts = np.bincount(mask.ravel(), minlength=2)
    plain = post(client, "b.png", data, format="json").json()
    assert plain["kind"] == "image" and plain["shape"] == [48, 64] and plain["spacing_mm"] is None
    assert [(c["id"], c["name"], c["pixels"], c["area_mm2"]) for c in plain["classes"]] == \
        [(0, "background", counts[0], None), (1, "lesion", counts[1], None)]
    assert "preview" not in plain
    scaled = post(client, "b.png", data, format="json", spacing="0.5,0.25", preview="true").json()
    assert scaled["spacing_mm"] == [0.5, 0.25]
    assert [c["area_mm2"] for c in scaled["classes"]] == pytest.approx([counts[0] * 0.125, counts[1] * 0.125])
    preview = scaled["preview"]
    assert (preview["height"], preview["width"], len(preview["slices"])) == (48, 64, 1)
    ids = np.frombuffer(base64.b64decode(preview["slices"][0]["labels"]), np.uint8).reshape(48, 64)
    np.testing.assert_array_equal(ids, mask)
    assert base64.b64decode(scaled["mask"]["base64"]) == post(client, "b.png", data).content
    assert_one_line(post(client, "b.png", data, format="json", spacing="-1"), 422, "spacing")
    assert_one_line(post(client, "b.png", data, format="xml"), 422, "format")


def test_nifti_round_trip_keeps_the_affine(volume_run, tmp_path):
    import nibabel as nib

    client = local_client(create_app(volume_run, device="cpu"))
    source = tmp_path / "scan.nii.gz"
    affine = write_nifti(source, shape=(40, 36, 5))
    data = source.read_bytes()
    response = post(client, "scan.nii.gz", data)
    assert response.status_code == 200, response.text
    assert 'filename="scan_mask.nii.gz"' in response.headers["content-disposition"]
    served = tmp_path / "served.nii.gz"
    served.write_bytes(response.content)
    image = nib.load(str(served))
    np.testing.assert_allclose(image.affine, affine, atol=1e-6)
    expected = nib.load(str(predicted_file(volume_run, tmp_path, "scan.nii.gz", data)))
    np.testing.assert_array_equal(np.asarray(image.dataobj), np.asarray(expected.dataobj))
    assert image.shape == (40, 36, 5) and len(np.unique(np.asarray(image.dataobj))) > 1

    stats = post(client, "scan.nii.gz", data, format="json", preview="true").json()
    zooms = nib.load(str(source)).header.get_zooms()
    assert stats["kind"] == "volume" and stats["spacing_mm"] == pytest.approx(list(zooms))
    labels = np.asarray(expected.dataobj)
    for row in stats["classes"]:
        voxels = int((labels == row["id"]).sum())
        assert row["pixels"] == voxels and row["volume_ml"] == pytest.approx(voxels * np.prod(zooms) / 1000)
    assert len(stats["preview"]["slices"]) == 5  # one per slice along the last stored axis, as predicted
    assert [row["id"] for row in stats["classes"]] == [0, 1, 2]


def test_mha_volume_round_trip_keeps_its_geometry(volume_run, tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    client = local_client(create_app(volume_run, device="cpu"))
    image = sitk.GetImageFromArray(np.random.default_rng(8).normal(size=(3, 30, 44)).astype(np.float32))
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-10.0, 5.0, 30.0))
    source = tmp_path / "scan.mha"
    sitk.WriteImage(image, str(source))
    data = source.read_bytes()
    response = post(client, "scan.mha", data)
    assert response.status_code == 200, response.text
    assert 'filename="scan_mask.mha"' in response.headers["content-disposition"]
    served = tmp_path / "served.mha"
    served.write_bytes(response.content)
    served_image, expected = sitk.ReadImage(str(served)), sitk.ReadImage(str(predicted_file(volume_run, tmp_path,
                                                                                            "scan.mha", data)))
    assert served_image.GetSize() == (44, 30, 3) and served_image.GetSpacing() == pytest.approx((0.8, 0.7, 2.5))
    assert served_image.GetOrigin() == pytest.approx((-10.0, 5.0, 30.0))
    labels = sitk.GetArrayFromImage(expected)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(served_image), labels)
    assert len(np.unique(labels)) > 1
    stats = post(client, "scan.mha", data, format="json").json()
    assert stats["spacing_mm"] == pytest.approx([0.8, 0.7, 2.5])
    for row in stats["classes"]:
        voxels = int((labels == row["id"]).sum())
        assert row["pixels"] == voxels and row["volume_ml"] == pytest.approx(voxels * 0.8 * 0.7 * 2.5 / 1000)


def test_upload_limit_413_then_still_serving(client):
    big = bytes(80 * 1024)  # over the fixture's 0.05 MiB
    assert_one_line(post(client, "big.png", big), 413, "limit")

    def chunks():  # no Content-Length: the limit counts the bytes as they arrive
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        for _ in range(10):
            yield bytes(8192)
        yield b"\r\n--b--\r\n"

    response = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_one_line(response, 413, "limit")
    assert post(client, "ok.png", blob_png(5, 32, 32)).status_code == 200


def test_bad_files_get_one_line_4xx_and_the_server_keeps_serving(client):
    good = blob_png(6, 40, 40)
    assert_one_line(post(client, "cut.png", good[: len(good) // 2]), 422, "cut.png", "cannot read image")
    assert_one_line(post(client, "empty.png", b""), 422, "empty.png", "empty file")
    assert_one_line(post(client, "notes.txt", b"hello"), 415, "notes.txt", "unsupported file type")
    assert_one_line(post(client, "fake.nii.gz", b"not a volume"), 422, "fake.nii.gz")
    assert_one_line(client.post("/predict"), 422, "file")  # no file field
    assert post(client, "good.png", good).status_code == 200


def test_bearer_token_required_when_set(binary_run):
    client = local_client(create_app(binary_run, device="cpu", token=TOKEN))
    data = blob_png(7, 32, 32)
    assert client.get("/health").json()["token_required"] is True  # liveness needs no token
    assert client.get("/").status_code == 200  # the page holds no data; it asks for the token
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        response = client.post("/predict", headers=headers, files={"file": ("a.png", data)})
        assert_one_line(response, 401, "token is required", "Bearer")
        assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/info", headers=headers).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/predict", headers=good, files={"file": ("a.png", data)}).status_code == 200
    assert client.get("/info", headers=good).status_code == 200


def test_temporary_files_are_removed(binary_run, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    client = local_client(create_app(binary_run, device="cpu", temp_dir=temp, max_upload_mb=0.05))
    assert post(client, "a.png", blob_png(8, 32, 32)).status_code == 200
    assert post(client, "a.png", blob_png(8, 32, 32), format="json", preview="true").status_code == 200
    assert post(client, "cut.png", blob_png(8, 32, 32)[:50]).status_code == 422
    assert post(client, "big.png", bytes(80 * 1024)).status_code == 413
    assert list(temp.iterdir()) == []


def test_cli_serve_missing_extra_and_host_warning(binary_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    assert main(["serve", "--run-dir", str(binary_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "vmunet serve: error:" in err and "'serve' extra" in err and "uvicorn" in err
    monkeypatch.undo()

    started = []

    class FakeServer:
        def run(self, sockets):
            started.append(sockets[0].getsockname())

    monkeypatch.setattr("vmunet.serve.make_server", lambda app, host, port: FakeServer())
    lines = []
    serve(binary_run, host="0.0.0.0", port=0, device="cpu", report=lines.append)
    assert started and "warning: serving on 0.0.0.0" in lines[0] and "reachable from other machines" in lines[0]
    assert "?token=" in lines[-1]  # a random token by default, in the URL to open
    lines.clear()
    serve(binary_run, host="127.0.0.1", port=0, device="cpu", report=lines.append)
    assert not any("warning" in line for line in lines)


# ---- a live server on 127.0.0.1: concurrent requests, and the page in headless Chromium ----

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(binary_run, uploads):
    port = free_port()
    server = make_server(create_app(binary_run, device="cpu", temp_dir=uploads, token=TOKEN), "127.0.0.1", port,
                         log_level="warning")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG_LIMIT_S
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def http_post(url: str, name: str, data: bytes) -> bytes:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/predict", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                              "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=HANG_LIMIT_S) as response:
        return response.read()


def test_concurrent_requests_get_their_own_answers(live_server, client):
    images = {f"img{i}.png": blob_png(10 + i, 32 + 8 * i, 64 - 4 * i) for i in range(6)}
    expected = {name: post(client, name, data).content for name, data in images.items()}  # one at a time
    results, errors = {}, []
    gate = threading.Barrier(len(images))

    def worker(name, data):
        try:
            gate.wait()
            results[name] = http_post(live_server, name, data)
        except Exception as error:  # reported below
            errors.append(f"{name}: {error}")

    threads = [threading.Thread(target=worker, args=item) for item in images.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert results == expected
    assert len({Image.open(io.BytesIO(v)).size for v in results.values()}) == len(images)
    with pytest.raises(urllib.error.HTTPError) as bad:  # a bad file in between does not stop the server
        http_post(live_server, "cut.png", images["img0.png"][:40])
    assert bad.value.code == 422
    assert http_post(live_server, "img0.png", images["img0.png"]) == expected["img0.png"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_page_in_headless_chromium(live_server, binary_run, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives Chromium with selenium")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    data = blob_png(21, 56, 72)
    image = tmp_path / "lesion.png"
    image.write_bytes(data)
    expected = predicted_file(binary_run, tmp_path, "lesion.png", data)
    counts = np.bincount((np.asarray(Image.open(expected)) // 255).ravel(), minlength=2)
    downloads = tmp_path / "downloads"
    downloads.mkdir()

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"{live_server}/?token={TOKEN}")  # the URL serve prints; the page keeps the token as a cookie
        WebDriverWait(driver, 20).until(lambda d: "vmunet-tiny" in d.find_element(By.ID, "runline").text)
        driver.find_element(By.ID, "file").send_keys(str(image))
        WebDriverWait(driver, 30).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                        in ("done", "error"))
        assert driver.find_element(By.TAG_NAME, "body").get_attribute("data-state") == "done", \
            driver.find_element(By.ID, "status").text
        # The overlay, drawn at full opacity: the image's size, the class colour exactly where the mask is set
        # and the image itself elsewhere.
        canvas = json.loads(driver.execute_script("""
            const slider = document.getElementById('opacity');
            slider.value = 100; slider.dispatchEvent(new Event('input'));
            const c = document.getElementById('canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return JSON.stringify({w: c.width, h: c.height, visible: c.style.display !== 'none',
                                   rgba: Array.from(d)});"""))
        assert (canvas["h"], canvas["w"], canvas["visible"]) == (56, 72, True)
        rgb = np.array(canvas["rgba"], np.uint8).reshape(56, 72, 4)[..., :3]
        mask = np.asarray(Image.open(expected)) > 0
        assert mask.any() and (~mask).any()
        np.testing.assert_array_equal(rgb[mask], np.broadcast_to([230, 25, 75], rgb[mask].shape))
        np.testing.assert_array_equal(rgb[~mask], np.asarray(Image.open(image))[~mask])
        rows = driver.find_elements(By.CSS_SELECTOR, "#classes tbody tr")
        table = [(r.get_attribute("data-class-id"), r.find_element(By.CSS_SELECTOR, ".pixels").text) for r in rows]
        assert table == [("0", str(counts[0])), ("1", str(counts[1]))]
        assert "lesion (1)" in rows[1].text
        link = driver.find_element(By.ID, "download")
        assert link.get_attribute("download") == "lesion_mask.png"
        link.click()
        target = downloads / "lesion_mask.png"
        deadline = time.monotonic() + HANG_LIMIT_S
        while not target.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert target.is_file(), f"no download in {list(downloads.iterdir())}"
        assert target.read_bytes() == expected.read_bytes()
        # A bad file shows the server's one-line message, and the page keeps working.
        bad = tmp_path / "broken.png"
        bad.write_bytes(data[:60])
        driver.find_element(By.ID, "file").send_keys(str(bad))
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                                        == "error")
        assert "broken.png: cannot read image" in driver.find_element(By.ID, "status").text
    finally:
        driver.quit()
