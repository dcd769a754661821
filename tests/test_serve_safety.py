"""vmunet serve under attack: uploads whose header names another file (each format), bombs by header, the Host
check, the token (checked before the body), the concurrency and read-time limits, the bounded preview, and a
bounded load test mixing valid and hostile uploads (memory, temporary files, still answering afterwards)."""

import io
import socket
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

from builders import blob_image  # noqa: E402
from hostile_files import SECRET, h5_file, mha, nifti_claiming, nrrd, png_claiming  # noqa: E402
from test_predict import make_run  # noqa: E402
from vmunet.cli import main  # noqa: E402
from vmunet.serve import create_app, make_server, serve  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


# The answers' status codes prove nothing was decoded (a decoded bomb is a 200 or a MemoryError, not a 413 from the
# header); the time limit only catches a worker left blocked (a /dev/stdin read), so it is generous for loaded machines.
BLOCKED_WORKER_S = 60


def good_png(seed: int = 1, height: int = 40, width: int = 48) -> bytes:
    return png_bytes(blob_image(np.random.default_rng(seed), height, width)[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("safety-run"))


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("safety-volume"), num_classes=3, input_channels=1,
                    normalization="zscore", dataset="nifti")


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory) -> Path:
    """Files outside any upload that a hostile header points at."""
    import h5py

    folder = tmp_path_factory.mktemp("secrets")
    (folder / "secret.raw").write_bytes(SECRET)
    with h5py.File(folder / "secret.h5", "w") as f:
        f["image"] = np.frombuffer(SECRET, np.uint8).reshape(1, 4, 4)
    return folder


@pytest.fixture(scope="module")
def temp_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("safety-uploads")


@pytest.fixture(scope="module")
def client(run, temp_dir) -> TestClient:
    return TestClient(create_app(run, device="cpu", token=TOKEN, temp_dir=temp_dir), base_url="http://127.0.0.1")


def post(client, name: str, data: bytes, headers=AUTH, **params):
    return client.post("/predict", params=params, headers=headers, files={"file": (name, data)})


def one_line(response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    assert "vmunet-serve-" not in detail, f"the temporary path leaks into the message: {detail}"
    for word in words:
        assert word in detail, detail
    return detail


# ---- uploads that name another file: refused from the header, whether that file exists or not ----

@pytest.mark.parametrize("name, make", [
    ("a.mha", lambda target: mha(str(target))),
    ("lookalike.mha", lambda target: mha(str(target), extra="elementdatafile = LOCAL\n")),
    ("a.nrrd", lambda target: nrrd(f"data file: {target}")),
    ("b.nrrd", lambda target: nrrd(f"datafile: {target}")),
])
def test_sitk_headers_naming_another_file_are_refused_alike(client, secrets_dir, temp_dir, name, make):
    pytest.importorskip("SimpleITK")
    answers = []
    for target in (secrets_dir / "secret.raw", secrets_dir / "missing.raw"):
        started = time.perf_counter()
        response = post(client, name, make(target), format="json", preview="true")
        assert time.perf_counter() - started < BLOCKED_WORKER_S
        detail = one_line(response, 422, name, "another file")
        assert str(secrets_dir) not in detail and "TOP-SECRET" not in response.text
        answers.append((response.status_code, detail))
    assert answers[0] == answers[1], "an existing and a missing target must answer alike"
    assert list(temp_dir.iterdir()) == []


def test_dev_stdin_and_detached_headers_are_refused_at_once(client):
    pytest.importorskip("SimpleITK")
    started = time.perf_counter()
    one_line(post(client, "stdin.mha", mha("/dev/stdin")), 422, "stdin.mha", "another file")
    assert time.perf_counter() - started < BLOCKED_WORKER_S, "a header naming /dev/stdin must not block a worker"
    one_line(post(client, "scan.mhd", mha("scan.raw")), 422, "scan.mhd", "detached header")
    one_line(post(client, "scan.nhdr", nrrd("data file: scan.raw")), 415, "unsupported file type")
    assert post(client, "fine.png", good_png()).status_code == 200


@pytest.mark.parametrize("how", ["external", "link", "soft-to-link", "virtual"])
def test_h5_storage_outside_the_upload_is_refused(client, secrets_dir, tmp_path, how):
    pytest.importorskip("h5py")
    data = h5_file(tmp_path / "x.npy.h5", how, secrets_dir / "secret.h5", secrets_dir / "secret.raw")
    response = post(client, "x.npy.h5", data, format="json", preview="true")
    detail = one_line(response, 422, "x.npy.h5")
    assert "other file" in detail and str(secrets_dir) not in detail and "TOP-SECRET" not in response.text


# ---- bombs by header: 413 naming the limit, well under a second of work ----

def test_bombs_by_header_get_413_naming_the_limit(client, tmp_path):
    cases = [("bomb.png", png_claiming(12000, 12000), "decompression bomb"),  # Pillow warns, did not refuse
             ("big.png", png_claiming(5000, 5000, 8), "--max-voxels"),  # under Pillow's limit, over serve's
             ("huge.nii", nifti_claiming((30000, 30000, 30000)), "--max-voxels"),
             ("cube.nii.gz", nifti_claiming((1200, 1200, 1200), gz=True), "--max-voxels")]
    if _has("SimpleITK"):
        cases.append(("huge.mha", mha("LOCAL", size="30000 30000 30000"), "--max-voxels"))
    if _has("h5py"):
        cases.append(("huge.npy.h5", h5_file(tmp_path / "huge.npy.h5", "huge"), "--max-voxels"))
    for name, data, words in cases:
        started = time.perf_counter()
        one_line(post(client, name, data), 413, name, words)
        assert time.perf_counter() - started < BLOCKED_WORKER_S, name
    assert post(client, "fine.png", good_png()).status_code == 200


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_every_tiff_page_is_checked(run, tmp_path):
    """A multi-page TIFF whose second page is over the limit (the first is not) is refused from its header."""
    client = TestClient(create_app(run, device="cpu", max_voxels=10_000), base_url="http://127.0.0.1")
    buffer = io.BytesIO()
    small, large = Image.new("L", (50, 50)), Image.new("L", (200, 200))
    small.save(buffer, format="TIFF", save_all=True, append_images=[large], compression="tiff_deflate")
    one_line(post(client, "pages.tif", buffer.getvalue()), 413, "pages.tif", "200 x 200", "10,000")
    buffer = io.BytesIO()
    small.save(buffer, format="TIFF")
    assert post(client, "page.tif", buffer.getvalue()).status_code == 200


def test_an_image_in_another_format_than_its_name_is_refused(client):
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buffer, format="GIF")  # Pillow would open it whatever its name
    one_line(post(client, "photo.png", buffer.getvalue()), 422, "photo.png", "not a PNG/JPEG/BMP/TIFF image")


# ---- Host, token ----

def test_host_check_refuses_other_names(client):
    for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST"):
        assert client.get("/info", headers={**AUTH, "Host": host}).status_code == 200, host
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", ""):
        response = client.get("/info", headers={**AUTH, "Host": host})
        one_line(response, 421, "--allowed-host")
        assert post(client, "a.png", good_png(), headers={**AUTH, "Host": host}).status_code == 421


def test_allowed_host_names(run):
    from vmunet.serve import allowed_host_names

    assert allowed_host_names("127.0.0.1", None) == {"127.0.0.1", "localhost", "[::1]", "::1"}
    assert "seg.lab.example" in allowed_host_names("127.0.0.1", ["seg.lab.example"])
    assert allowed_host_names("0.0.0.0", None) is None and allowed_host_names("127.0.0.1", ["*"]) is None
    client = TestClient(create_app(run, device="cpu", allowed_hosts=allowed_host_names("127.0.0.1", ["seg.lab"])),
                        base_url="http://seg.lab")
    assert client.get("/info").status_code == 200


def test_token_cookie_flow_and_bad_tokens(client, run):
    response = client.get(f"/?token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name, value = cookie.split(";")[0].split("=", 1)
    assert value == TOKEN
    fresh = TestClient(client.app, base_url="http://127.0.0.1")
    assert fresh.get("/info").status_code == 401
    assert fresh.get("/info", headers={"Cookie": f"{name}={value}"}).status_code == 200
    assert fresh.get("/info", headers={"Cookie": f"{name}=wrong"}).status_code == 401
    assert fresh.get("/?token=wrong", follow_redirects=False).status_code == 200  # the page, no cookie
    assert "set-cookie" not in fresh.get("/?token=wrong", follow_redirects=False).headers
    for headers in ({"Authorization": "Bearer "}, {"Authorization": "Bearer t\u00f6ken".encode()}):
        assert fresh.get("/info", headers=headers).status_code == 401
    for bad in ("", "t\u00f6ken", "two words"):
        with pytest.raises(ValueError, match="--token"):
            create_app(run, device="cpu", token=bad)


def test_cli_refuses_empty_token_and_bad_port(run, capsys):
    assert main(["serve", "--run-dir", str(run), "--token", ""]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--token is empty" in err
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--run-dir", str(run), "--port", "99999"])
    assert exit_.value.code == 2 and "0..65535" in capsys.readouterr().err


def test_busy_port_is_one_line_before_any_banner(run):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        lines = []
        with pytest.raises(ValueError, match="cannot listen on 127.0.0.1:") as error:
            serve(run, host="127.0.0.1", port=busy.getsockname()[1], device="cpu", report=lines.append)
        assert "\n" not in str(error.value) and lines == []


# ---- a live server: 401 before the body, 503 beyond the slots, 408 for a slow body ----

def start_server(app):
    server = make_server(app, "127.0.0.1", 0, log_level="critical")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, port


@pytest.fixture
def live(run, tmp_path):
    servers = []

    def launch(**options):
        temp = tmp_path / f"tmp{len(servers)}"
        temp.mkdir()
        server, thread, port = start_server(create_app(run, device="cpu", token=TOKEN, temp_dir=temp, **options))
        servers.append((server, thread))
        return port, temp

    yield launch
    for server, thread in servers:
        server.should_exit = True
        thread.join(10)


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(head.encode() + body)
    return sock


def read_status(sock: socket.socket) -> tuple[int, str]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head = data.split(b"\r\n\r\n")[0].decode("latin-1")
    return int(head.split()[1]), head


def upload_head(port: int, length: int, auth: bool = True, boundary: str = "b") -> str:
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length}\r\n"
            + (f"Authorization: Bearer {TOKEN}\r\n" if auth else "") + "\r\n")


def test_401_before_the_body_is_read(live):
    port, temp = live()
    sock = raw_request(port, upload_head(port, 400 * 2 ** 20, auth=False))  # 400 MiB declared, none sent
    with sock:
        status, head = read_status(sock)
    assert status == 401 and "www-authenticate: Bearer" in head.lower().replace("bearer", "Bearer")
    assert list(temp.iterdir()) == []


def test_slots_503_with_retry_after_and_read_timeout_408(live):
    port, temp = live(max_concurrent=1, queue_wait_s=0, read_timeout_s=1.0)
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    slow = raw_request(port, upload_head(port, 10_000), part)  # holds the only slot, never finishes its body
    with slow:
        deadline = time.monotonic() + 20
        while True:  # the slow request has its slot once the server has begun its body
            busy = raw_request(port, upload_head(port, 10), b"0123456789")
            with busy:
                status, head = read_status(busy)
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 503 and "retry-after: 5" in head.lower()
        status, _ = read_status(slow)  # its body never completes: the read time limit answers
        assert status == 408
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(urllib.request.Request(url + "/health"), timeout=30) as response:
        assert response.status == 200
    assert list(temp.iterdir()) == []


# ---- the preview is bounded; long names and .mhd are one-line answers ----

def test_preview_is_a_few_downscaled_slices(volume_run, tmp_path):
    import nibabel as nib

    client = TestClient(create_app(volume_run, device="cpu"), base_url="http://127.0.0.1")
    volume = np.random.default_rng(0).normal(size=(40, 30, 20)).astype(np.float32)  # stored (X, Y, Z): 20 slices
    nib.save(nib.Nifti1Image(np.repeat(volume, 1, axis=2), np.eye(4)), tmp_path / "v.nii.gz")
    body = post(client, "v.nii.gz", (tmp_path / "v.nii.gz").read_bytes(), headers={}, format="json",
                preview="true").json()
    preview = body["preview"]
    assert preview["depth"] == 20 and 2 <= len(preview["slices"]) <= 8
    assert [s["z"] for s in preview["slices"]][0] == 0 and preview["slices"][-1]["z"] == 19

    image_client = TestClient(create_app(make_run(tmp_path / "r"), device="cpu"), base_url="http://127.0.0.1")
    wide = png_bytes(blob_image(np.random.default_rng(3), 300, 1200)[0])
    preview = post(image_client, "wide.png", wide, headers={}, format="json", preview="true").json()["preview"]
    assert (preview["height"], preview["width"]) == (128, 512) and len(preview["slices"]) == 1
    labels = np.frombuffer(__import__("base64").b64decode(preview["slices"][0]["labels"]), np.uint8)
    assert labels.size == 128 * 512


def test_long_file_name_is_answered(client):
    name = "x" * 400 + ".png"
    response = post(client, name, good_png())
    assert response.status_code == 200
    assert len(response.headers["content-disposition"]) < 200
    one_line(post(client, "y" * 400 + ".png", b""), 422, "empty file")


# ---- the bounded load test ----

def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def vm_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n\r\n').encode() \
        + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def http(port: int, name: str, data: bytes, headers: dict) -> int:
    body, kind = multipart(name, data)
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                     headers={"Content-Type": kind, **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


LOAD_BOUND_MIB = 1024  # the README's bound: one request's peak stays under 1 GB above the loaded model


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux's /proc")
def test_bounded_load_mixed_valid_and_hostile(live, secrets_dir):
    port, temp = live(max_concurrent=2, queue_wait_s=30)
    assert http(port, "warm.png", good_png(), AUTH) == 200  # the first forward's one-time allocations
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    baseline = vm_rss_kib()
    mixes = [("ok.png", good_png(2, 64, 64), AUTH, {200}),
             ("bomb.png", png_claiming(12000, 12000), AUTH, {413}),
             ("big.png", png_claiming(4100, 4100, 8), AUTH, {413}),
             ("huge.nii", nifti_claiming((30000, 30000, 30000)), AUTH, {413}),
             ("ok.png", good_png(3, 48, 80), {}, {401}),
             ("ok.png", good_png(4, 48, 80), {**AUTH, "Host": "attacker.example"}, {421})]
    if _has("SimpleITK"):
        mixes.append(("leak.mha", mha(str(secrets_dir / "secret.raw")), AUTH, {422}))
    counts, errors = {}, []
    stop = time.monotonic() + 3.0

    def client(offset: int):
        index = offset
        while time.monotonic() < stop:
            name, data, headers, expected = mixes[index % len(mixes)]
            index += 1
            try:
                status = http(port, name, data, headers)
            except OSError as error:  # reported below
                errors.append(f"{name}: {error}")
                continue
            counts[status] = counts.get(status, 0) + 1
            if status not in expected | {503}:
                errors.append(f"{name}: {status}, expected {expected}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    peak_mib = (vm_hwm_kib() - baseline) / 1024
    print(f"load test: {sum(counts.values())} answers {counts}, peak +{peak_mib:.0f} MiB above the warm server")
    assert not errors, errors[:5]
    assert counts.get(200, 0) >= 1 and counts.get(413, 0) >= 1, counts
    assert peak_mib < LOAD_BOUND_MIB, f"peak {peak_mib:.0f} MiB above the loaded model"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as response:
        assert response.status == 200
    assert http(port, "after.png", good_png(5), AUTH) == 200
    assert list(temp.iterdir()) == []


def test_no_token_is_explicit_and_warned(run, monkeypatch):
    class FakeServer:
        def run(self, sockets):
            pass

    apps = []
    monkeypatch.setattr("vmunet.serve.make_server", lambda app, host, port: apps.append(app) or FakeServer())
    lines = []
    serve(run, host="127.0.0.1", port=0, device="cpu", no_token=True, report=lines.append)
    assert any("warning: --no-token" in line for line in lines) and not any("?token=" in line for line in lines)
    assert TestClient(apps[-1], base_url="http://127.0.0.1").get("/info").status_code == 200
    lines.clear()
    serve(run, host="127.0.0.1", port=0, device="cpu", report=lines.append)  # the default: a random token
    token = next(line for line in lines if "?token=" in line).split("?token=")[1].split()[0]
    client = TestClient(apps[-1], base_url="http://127.0.0.1")
    assert len(token) >= 32 and client.get("/info").status_code == 401
    assert client.get("/info", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    with pytest.raises(ValueError, match="--no-token and --token together"):
        serve(run, host="127.0.0.1", port=0, device="cpu", no_token=True, token="abc", report=lines.append)
