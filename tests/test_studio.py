"""npdraw studio: POST /v1/decode and /v1/encode (through TestClient), and the page at / in a real headless
chromium driven by selenium, against `npdraw serve --no-ray` on a loopback port.

Models: the two tiny MNIST models of test_serving (trained once per session, shared with it) and an untrained
colour model with CelebA's shapes (64×64 images on a 32×32 canvas, 4×4 parts): its weights are random, but
decoding, encoding and the page's geometry are the same as for a trained one.

The browser tests skip, naming what is missing, where chromium, chromedriver or selenium are absent; with
NPDRAW_REQUIRE_BROWSER=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from npdraw_serving.app import local_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_serving import MNIST_RAW, train_tiny_models  # noqa: E402

# -- models and helpers ------------------------------------------------------------------------------------------


def untrained_colour_model(path: Path) -> Path:
    """A model file with CelebA's shapes (3×64×64 images, 32×32 canvas, K=4, 8×8 cells) and small random
    networks; its bank is 40 random colour patches."""
    import torch

    from npdraw_core.build import model_from_config, prior_from_config
    from npdraw_core.config import load_config
    from npdraw_core.geometry import ModelShape
    from npdraw_core.model_file import save_model_file
    from npdraw_core.registry import default_registry

    if path.exists():
        return path
    small = [
        "model.prior.d_model=32", "model.prior.depth=1", "model.prior.num_heads=2", "model.prior.head_dim=16",
        "model.prior.mlp_dim=64", "model.encoder.channels=16", "model.decoder.channels=16",
        "model.decoder.num_residual_blocks=1",
    ]
    registry = default_registry()
    config = load_config(REPO / "configs" / "celeba.yaml", small, registry=registry)
    shape = ModelShape(channels=3, image_size=64, canvas_size=32, patch_size=4, bank_size=40)
    bank = torch.rand(40, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    model = model_from_config(config, shape, bank, prior_from_config(config, shape, registry), registry)
    save_model_file(path, model.eval(), config, shape, epoch=0, metrics={})
    return path


@pytest.fixture(scope="session")
def studio_models(tmp_path_factory) -> dict[str, Path]:
    # The same directory as test_serving's (trained once a session), or NPDRAW_TEST_MODELS_DIR to keep them
    # between sessions while working on the studio.
    root = Path(os.environ.get("NPDRAW_TEST_MODELS_DIR") or tmp_path_factory.getbasetemp() / "serving_models")
    models = dict(train_tiny_models(root))
    models["colour"] = untrained_colour_model(root / "colour.pt")
    return models


@pytest.fixture(scope="module")
def client(studio_models):
    app, _ = local_app({"models": {k: str(v) for k, v in studio_models.items()}, "max_samples": 8})
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def pixels(b64: str) -> np.ndarray:
    """A base64 PNG → (H, W, C) uint8 (C = 1 for grey)."""
    array = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))
    return array[..., None] if array.ndim == 2 else array


def png_b64(array: np.ndarray, mode: str | None = None) -> str:
    out = io.BytesIO()
    Image.fromarray(array, mode).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def sample(client, model: str, seed: int) -> dict:
    body = {"model": model, "seed": seed, "format": "json", "return_latents": True}
    return client.post("/v1/samples", json=body).json()["samples"][0]


def latents_of(parts: list[dict]) -> dict[str, list]:
    return {key: [p[name] for p in parts] for key, name in (("whether", "whether"), ("exemplar", "exemplar"), ("cell", "cell"))}


def decode(client, model: str, latents: dict) -> dict:
    response = client.post("/v1/decode", json={"model": model, "latents": latents})
    assert response.status_code == 200, response.text
    return response.json()


def changed_box(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) of the pixels that differ, or None."""
    rows, cols = np.nonzero((before != after).any(-1))
    return None if not len(rows) else (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)


def inside(box, cell_box, canvas_size: int) -> bool:
    top, left, size = cell_box
    return box[0] >= max(top, 0) and box[1] >= max(left, 0) and box[2] <= min(top + size, canvas_size) and box[3] <= min(left + size, canvas_size)


def lonely_step(parts: list[dict]) -> dict:
    """A drawn step whose cell holds no other part."""
    cells = [p["cell"] for p in parts if p["whether"]]
    return next(p for p in parts if p["whether"] and cells.count(p["cell"]) == 1)


# -- the API: decode and encode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["a", "colour"])
def test_decoding_a_samples_latents_gives_its_canvas_and_image_back(client, model):
    drawn = sample(client, model, 5)
    decoded = decode(client, model, latents_of(drawn["parts"]))
    assert decoded["parts"] == drawn["parts"]
    canvas = pixels(decoded["canvas_png"])
    size = decoded["canvas_size"]
    assert canvas.shape[:2] == (size, size)
    # /v1/samples shows the canvas enlarged to the image size (nearest neighbour): shrink it back.
    shown = pixels(drawn["canvas_png"])
    step = shown.shape[0] // size
    np.testing.assert_array_equal(shown[::step, ::step], canvas)  # bit-exact: rendering is exact
    # The decoder ran on a batch of one here and on a fixed-size block there: equal up to the last float bit.
    image, sampled = pixels(decoded["image_png"]).astype(int), pixels(drawn["image_png"]).astype(int)
    assert image.shape == sampled.shape and np.abs(image - sampled).max() <= 1


@pytest.mark.parametrize("model", ["a", "colour"])
def test_editing_one_step_changes_only_its_cell_of_the_canvas(client, model):
    drawn = sample(client, model, 2)
    entry = {m["name"]: m for m in client.get("/v1/models").json()["models"]}[model]
    latents = latents_of(drawn["parts"])
    before = decode(client, model, latents)
    step = lonely_step(drawn["parts"])
    t = step["step"]
    replaced = json.loads(json.dumps(latents))
    replaced["exemplar"][t] = (step["exemplar"] + 1) % entry["bank_size"]
    removed = json.loads(json.dumps(latents))
    removed["whether"][t], removed["exemplar"][t], removed["cell"][t] = False, None, None
    for edited in (replaced, removed):
        after = decode(client, model, edited)
        box = changed_box(pixels(before["canvas_png"]), pixels(after["canvas_png"]))
        assert box is not None, "a different part must change the canvas"
        assert inside(box, step["box"], entry["canvas_size"]), (box, step["box"])
        assert after["image_png"] != before["image_png"]
    assert decode(client, model, removed)["latents"]["whether"][t] is False


@pytest.mark.parametrize("model", ["a", "colour"])
def test_encode_then_decode_round_trip(client, model):
    drawn = sample(client, model, 9)
    encoded = client.post("/v1/encode", json={"model": model, "image": drawn["image_png"]})
    assert encoded.status_code == 200, encoded.text
    body = encoded.json()
    channels, size = body["image_shape"][:2]
    np.testing.assert_array_equal(pixels(body["input_png"]), pixels(drawn["image_png"]))  # already the right shape
    again = decode(client, model, body["latents"])
    assert (again["canvas_png"], again["image_png"], again["parts"]) == (body["canvas_png"], body["image_png"], body["parts"])
    assert pixels(body["canvas_png"]).shape == (body["canvas_size"], body["canvas_size"], channels)


@pytest.mark.parametrize(
    ("model", "mode", "size", "channels"),
    [("a", "RGBA", (90, 61), 1), ("a", "RGB", (7, 7), 1), ("colour", "L", (100, 100), 3), ("colour", "RGBA", (64, 200), 3),
     ("colour", "P", (33, 40), 3)],
)
def test_any_image_size_and_mode_is_converted_to_what_the_model_expects(client, model, mode, size, channels):
    rng = np.random.default_rng(0)
    width, height = size
    image = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA").convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
    response = client.post("/v1/encode", json={"model": model, "image": data_url})
    assert response.status_code == 200, response.text
    body = response.json()
    side = body["image_shape"][1]
    assert pixels(body["input_png"]).shape == (side, side, channels)
    assert pixels(body["image_png"]).shape == (side, side, channels)


def test_encode_inverts_grey_levels_when_asked(client):
    white = png_b64(np.full((28, 28), 255, np.uint8))
    plain = client.post("/v1/encode", json={"model": "a", "image": white}).json()
    inverted = client.post("/v1/encode", json={"model": "a", "image": white, "invert": True}).json()
    assert pixels(plain["input_png"]).min() == 255 and pixels(inverted["input_png"]).max() == 0


def _good_latents(client) -> dict:
    return latents_of(sample(client, "a", 5)["parts"])


def _with(latents: dict, field: str, value) -> dict:
    changed = json.loads(json.dumps(latents))
    changed[field] = value
    return changed


def _at_drawn_step(latents: dict, field: str, value) -> dict:
    """`latents` with `field` of its first drawn step set to `value`."""
    t = latents["whether"].index(True)
    return _with(latents, field, [value if i == t else v for i, v in enumerate(latents[field])])


# case: (bad latents made from good ones, the field the 422 must name; {t} is the first drawn step)
DECODE_422 = {
    "whether too short": (lambda z: _with(z, "whether", z["whether"][:-1]), "latents.whether"),
    "exemplar too long": (lambda z: _with(z, "exemplar", z["exemplar"] + [0]), "latents.exemplar"),
    "cell empty": (lambda z: _with(z, "cell", []), "latents.cell"),
    "exemplar past the bank": (lambda z: _at_drawn_step(z, "exemplar", 20), "latents.exemplar.{t}"),
    "negative exemplar": (lambda z: _at_drawn_step(z, "exemplar", -1), "latents.exemplar.{t}"),
    "cell past the grid": (lambda z: _at_drawn_step(z, "cell", 36), "latents.cell.{t}"),
    "drawn step without a cell": (lambda z: _at_drawn_step(z, "cell", None), "latents.cell.{t}"),
    "string exemplar": (lambda z: _with(z, "exemplar", ["3"] * 36), "latents.exemplar.0"),
    "float cell": (lambda z: _with(z, "cell", [1.0] * 36), "latents.cell.0"),
    "number as whether": (lambda z: _with(z, "whether", [1] * 36), "latents.whether.0"),
    "unknown key": (lambda z: _with(z, "colour", [1]), "latents.colour"),
    "missing cell": (lambda z: {k: v for k, v in z.items() if k != "cell"}, "latents.cell"),
}


@pytest.mark.parametrize("case", DECODE_422)
def test_bad_latents_get_422_naming_the_field(client, case):
    make, field = DECODE_422[case]
    latents = _good_latents(client)
    field = field.format(t=latents["whether"].index(True))
    response = client.post("/v1/decode", json={"model": "a", "latents": make(latents)})
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["detail"]], response.json()
    assert field in response.json()["message"]


def test_decode_requests_are_strict(client):
    latents = _good_latents(client)
    for body, field in (
        ({"model": "a"}, "latents"),
        ({"model": "a", "latents": latents, "seed": 3}, "seed"),
        ({"model": "a", "latents": [1, 2]}, "latents"),
        ({"latents": latents}, "model"),  # three models are served: name one
    ):
        response = client.post("/v1/decode", json=body)
        assert response.status_code == 422 and field in response.json()["message"], response.text
    assert client.post("/v1/decode", json={"model": "nope", "latents": latents}).status_code == 404
    assert client.post("/v1/decode", json={"model": "a", "latents": latents, "source": {"seed": 5}}).status_code == 200


def _truncated_png() -> str:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = base64.b64decode(png_b64(noise))
    return base64.b64encode(data[: len(data) // 2]).decode()


def _huge_png() -> str:
    return png_b64(np.zeros((1, 5000), np.uint8))


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("not base64!", "base64"),
        (base64.b64encode(b"hello, I am text").decode(), "not an image"),
        (_truncated_png(), "cannot be read"),
        (_huge_png(), "at most 4096"),
        ("", "not an image"),
        ("data:image/png,plain", "base64-encoded"),
        (5, "string"),
    ],
    ids=["not base64", "text", "truncated PNG", "5000 px wide", "empty", "data URL without base64", "a number"],
)
def test_unreadable_images_get_422_naming_the_field(client, image, words):
    response = client.post("/v1/encode", json={"model": "a", "image": image})
    assert response.status_code == 422, response.text
    assert [d["field"] for d in response.json()["detail"]] == ["image"]
    assert words in response.json()["message"]


def test_models_describe_the_grid_and_the_page_is_served(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert (models["a"]["cells_per_side"], models["a"]["pad_before"]) == (6, 1)
    assert (models["colour"]["cells_per_side"], models["colour"]["pad_before"], models["colour"]["image_shape"]) == (8, 0, [3, 64, 32 * 2])
    assert models["a"]["bank_image"] == {"per_row": 10, "pad": 1, "scale": 6}
    page = client.get("/")
    assert page.status_code == 200 and "npdraw studio" in page.text
    for asset in ("/studio/studio.js", "/studio/studio.css"):
        assert client.get(asset).status_code == 200
    assert "http" not in client.get("/studio/studio.js").text.replace("http://", "").split("//")[0]  # no network
    for text in (page.text, client.get("/studio/studio.js").text, client.get("/studio/studio.css").text):
        assert "https://" not in text and "http://" not in text, "the page must load nothing from the network"


# -- a live server on loopback --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return response.read()

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def decode_requests(self) -> int:
        """Successful POST /v1/decode so far, from the server's own metrics."""
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith('npdraw_requests_total{route="/v1/decode",status="200"}'):
                return int(float(line.split()[-1]))
        return 0


@pytest.fixture(scope="module")
def server(studio_models, tmp_path_factory):
    """`npdraw serve --no-ray` (the real command) on 127.0.0.1 and a free port."""
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    specs = [f"{name}={path}" for name, path in studio_models.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "npdraw_core", "serve", "--no-ray", "--host", "127.0.0.1", "--port", str(port), *specs]
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    served = Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if json.loads(served.get("/v1/health"))["status"] == "ok":
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"npdraw serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_edit_latency_over_http(server, studio_models):
    """200 edits (one cell each) decoded over loopback HTTP: p50/p99 round trip on this CPU."""
    drawn = server.post("/v1/samples", {"model": "a", "seed": 4, "format": "json", "return_latents": True})["samples"][0]
    latents = latents_of(drawn["parts"])
    rng = np.random.default_rng(0)
    seconds = []
    for _ in range(200):
        edited = json.loads(json.dumps(latents))
        t = int(rng.integers(36))
        edited["whether"][t], edited["exemplar"][t], edited["cell"][t] = True, int(rng.integers(20)), int(rng.integers(36))
        start = time.perf_counter()
        server.post("/v1/decode", {"model": "a", "latents": edited})
        seconds.append(time.perf_counter() - start)
    p50, p99 = np.percentile(seconds, [50, 99]) * 1000
    print(f"\nstudio edit latency (POST /v1/decode over loopback, 200 edits, MNIST tiny): p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert p99 < 1000, "every edit must re-decode within a second on a CPU"


# -- the page in a real browser -------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _missing_browser() -> str | None:
    missing = [name for name, found in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not found]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if not missing:
        return None
    return f"browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver (see .ci/run)"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = _missing_browser()
    if reason:
        if os.environ.get("NPDRAW_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path_factory.mktemp("downloads")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-default-apps", "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The studio in the browser, with the waits a person does implicitly."""

    def __init__(self, driver, server: Server):
        self.driver, self.server = driver, server

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, timeout: float = 15, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(script)
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what or script}; page error: {self.js('return studio.error')}")

    def open(self, query: str) -> Page:
        self.driver.get(f"{self.server.url}/?{query}")
        self.wait("return window.studio && studio.ready && !studio.busy && studio.decodeCount > 0", what="the page")
        return self

    def settled(self, decodes: int) -> dict:
        """Wait for decode number `decodes` to be shown; the studio's state after it."""
        self.wait(f"return studio.decodeCount >= {decodes} && !studio.busy", what=f"decode {decodes}")
        return self.state()

    def state(self) -> dict:
        return self.js(
            "return {decodes: studio.decodeCount, latents: studio.latents, decoded: studio.decoded, edits: studio.edits,"
            " error: studio.error, url: location.href, ms: studio.lastDecodeMs, base: studio.base.kind}"
        )

    def element(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def cell_offset(self, view_css: str, cell: int, model: dict) -> tuple[int, int]:
        """Offset of a cell's centre from the centre of a view's overlay (selenium's origin)."""
        overlay = self.element(f"{view_css} .overlay")
        side = overlay.size["width"]
        scale = side / model["canvas_size"]
        row, col = divmod(cell, model["cells_per_side"])
        k, pad = model["patch_size"], model["pad_before"]
        centre = lambda index: min(max((index * k - pad + k / 2) * scale, 2), side - 2)  # noqa: E731
        return round(centre(col) - side / 2), round(centre(row) - side / 2)

    def click_cell(self, cell: int, model: dict, view: str = "#canvas-view"):
        from selenium.webdriver.common.action_chains import ActionChains

        x, y = self.cell_offset(view, cell, model)
        ActionChains(self.driver).move_to_element_with_offset(self.element(f"{view} .overlay"), x, y).click().perform()

    def hover_cell(self, cell: int, model: dict, view: str = "#canvas-view"):
        from selenium.webdriver.common.action_chains import ActionChains

        x, y = self.cell_offset(view, cell, model)
        ActionChains(self.driver).move_to_element_with_offset(self.element(f"{view} .overlay"), x, y).perform()

    def drag_cells(self, start: int, stop: int, model: dict, view: str = "#canvas-view"):
        from selenium.webdriver.common.action_chains import ActionChains

        overlay = self.element(f"{view} .overlay")
        (x0, y0), (x1, y1) = self.cell_offset(view, start, model), self.cell_offset(view, stop, model)
        chain = ActionChains(self.driver).move_to_element_with_offset(overlay, x0, y0).click_and_hold()
        chain.move_to_element_with_offset(overlay, (x0 + x1) // 2, (y0 + y1) // 2)
        chain.move_to_element_with_offset(overlay, x1, y1).release().perform()

    def shown(self, view: str) -> np.ndarray:
        """The pixels a view shows (its image canvas, without the grid overlay), (H, W, 3) uint8."""
        url = self.js(f"return document.querySelector('{view} .pixels').toDataURL('image/png')")
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))

    def console_errors(self) -> list[str]:
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.fixture
def page(browser, server):
    page = Page(browser, server)
    browser.get_log("browser")  # start from an empty console
    yield page
    assert page.console_errors() == []


@pytest.fixture(scope="module")
def models(server) -> dict[str, dict]:
    return {m["name"]: m for m in json.loads(server.get("/v1/models"))["models"]}


def shrink(shown: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A view's pixels → the image it enlarged, checking that every pixel became a uniform block (nearest
    neighbour: crisp)."""
    step = shown.shape[0] // size
    assert shown.shape[:2] == (size * step, size * step), shown.shape
    blocks = shown.reshape(size, step, size, step, 3)
    assert (blocks == blocks[:, :1, :, :1]).all(), "the view is not a crisp nearest-neighbour enlargement"
    small = blocks[:, 0, :, 0]
    return small[..., :1] if channels == 1 else small


def test_load_sample_and_hover(page, models):
    page.open("model=a&seed=3")
    assert [o.get_attribute("value") for o in page.driver.find_elements("css selector", "#model option")] == list(models)
    state = page.state()
    drawn = page.server.post("/v1/samples", {"model": "a", "seed": 3, "format": "json", "return_latents": True})["samples"][0]
    assert state["latents"] == latents_of(drawn["parts"])
    # What is shown is what the API decodes, enlarged crisply.
    np.testing.assert_array_equal(shrink(page.shown("#canvas-view"), 28, 1), pixels(state["decoded"]["canvas_png"]))
    np.testing.assert_array_equal(shrink(page.shown("#image-view"), 28, 1), pixels(state["decoded"]["image_png"]))
    step = lonely_step(drawn["parts"])
    page.hover_cell(step["cell"], models["a"])
    text = page.wait("return studio.hover !== null && document.getElementById('hover').textContent")
    assert f"cell {step['cell']} " in text and f"part {step['exemplar']} at step {step['step']}" in text
    # Sample another seed with the button.
    page.js("document.getElementById('seed').value = 11")
    page.element("#sample").click()
    state = page.settled(state["decodes"] + 1)
    assert "seed=11" in state["url"] and state["edits"] == []


def test_remove_a_part_undo_and_redo(page, models, server):
    before = page.open("model=a&seed=3").state()
    requests = server.decode_requests()
    drawn = before["decoded"]["parts"]
    step = lonely_step(drawn)
    page.click_cell(step["cell"], models["a"])
    after = page.settled(before["decodes"] + 1)
    assert server.decode_requests() == requests + 1, "the page asked the server to decode the edit"
    assert after["edits"] == [f"r{step['cell']}"] and f"edits=r{step['cell']}" in after["url"]
    assert after["latents"]["whether"][step["step"]] is False
    expected = json.loads(json.dumps(before["latents"]))
    expected["whether"][step["step"]], expected["exemplar"][step["step"]], expected["cell"][step["step"]] = False, None, None
    assert after["latents"] == expected
    # The shown image is the server's decoding of exactly those latents, and it changed.
    independent = server.post("/v1/decode", {"model": "a", "latents": expected})
    shown = shrink(page.shown("#image-view"), 28, 1)
    np.testing.assert_array_equal(shown, pixels(independent["image_png"]))
    assert (shown != pixels(before["decoded"]["image_png"])).any()
    # The canvas changed exactly inside the removed part's cell.
    box = changed_box(pixels(before["decoded"]["canvas_png"]), shrink(page.shown("#canvas-view"), 28, 1))
    assert box is not None and inside(box, step["box"], 28)
    assert after["ms"] < 1000, f"an edit took {after['ms']:.0f} ms to decode and show"

    page.element("#undo").click()
    undone = page.settled(after["decodes"] + 1)
    assert undone["latents"] == before["latents"] and undone["edits"] == []
    np.testing.assert_array_equal(shrink(page.shown("#image-view"), 28, 1), pixels(before["decoded"]["image_png"]))
    page.element("#redo").click()
    assert page.settled(undone["decodes"] + 1)["latents"] == expected
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(page.driver).key_down(Keys.CONTROL).send_keys("z").key_up(Keys.CONTROL).perform()  # Ctrl+Z
    assert page.settled(undone["decodes"] + 2)["latents"] == before["latents"]


def test_replace_from_the_palette_and_drag_a_part(page, models):
    model = models["a"]
    before = page.open("model=a&seed=3").state()
    step = lonely_step(before["decoded"]["parts"])
    part = (step["exemplar"] + 3) % model["bank_size"]
    page.element(f"#palette canvas[data-exemplar='{part}']").click()
    assert page.js("return studio.selectedPart") == part
    page.click_cell(step["cell"], model)
    replaced = page.settled(before["decodes"] + 1)
    t = step["step"]
    assert (replaced["latents"]["exemplar"][t], replaced["latents"]["cell"][t]) == (part, step["cell"])
    assert replaced["decoded"]["image_png"] != before["decoded"]["image_png"]
    page.element(f"#palette canvas[data-exemplar='{part}']").click()  # deselect
    # Drag that part to an empty cell: it moves there (same step, same part).
    empty = next(c for c in range(36) if c not in replaced["latents"]["cell"])
    page.drag_cells(step["cell"], empty, model)
    moved = page.settled(replaced["decodes"] + 1)
    assert moved["edits"][-1] == f"m{step['cell']}.{empty}"
    assert (moved["latents"]["exemplar"][t], moved["latents"]["cell"][t]) == (part, empty)
    assert step["cell"] not in moved["latents"]["cell"]


def test_paste_a_region_of_another_sample(page, models, server):
    model = models["a"]
    before = page.open("model=a&seed=3").state()
    page.element("input[name=mode][value=paste]").click()
    page.js("document.getElementById('donor-seed').value = 8")
    page.element("#donor-sample").click()
    page.wait("return studio.donor && studio.donor.seed === 8")
    page.drag_cells(cell_of(1, 1, model), cell_of(4, 3, model), model)  # rows 1-4, columns 1-3
    assert page.js("return studio.region") == {"r0": 1, "c0": 1, "r1": 4, "c1": 3}
    page.element("#paste").click()
    pasted = page.settled(before["decodes"] + 1)
    assert pasted["edits"] == ["p8.1.1.4.3"]
    donor = server.post("/v1/samples", {"model": "a", "seed": 8, "format": "json", "return_latents": True})["samples"][0]
    donor_canvas = pixels(server.post("/v1/decode", {"model": "a", "latents": latents_of(donor["parts"])})["canvas_png"])
    np.testing.assert_array_equal(shrink(page.shown("#donor-view"), 28, 1), donor_canvas)  # the donor is shown
    canvas, original = pixels(pasted["decoded"]["canvas_png"]), pixels(before["decoded"]["canvas_png"])
    # Fig. 4 on the canvas: the region is the donor's, the rest is unchanged (cells 5 px, 1 px padding).
    k, pad = model["patch_size"], model["pad_before"]
    rows, cols = slice(1 * k - pad, 5 * k - pad), slice(1 * k - pad, 4 * k - pad)
    np.testing.assert_array_equal(canvas[rows, cols], donor_canvas[rows, cols])
    outside = np.ones(canvas.shape[:2], bool)
    outside[rows, cols] = False
    np.testing.assert_array_equal(canvas[outside], original[outside])
    # The view is shareable: the URL restores the same latents in a fresh page.
    page.driver.get("about:blank")
    restored = page.open(pasted["url"].split("?", 1)[1]).state()
    assert restored["latents"] == pasted["latents"] and restored["edits"] == pasted["edits"]


def cell_of(row: int, col: int, model: dict) -> int:
    return row * model["cells_per_side"] + col


def test_upload_an_image_and_edit_its_parse(page, models, server, tmp_path):
    model = models["a"]
    page.open("model=a&seed=0")
    digit = mnist_test_image(3)
    path = tmp_path / "digit.png"
    Image.fromarray(digit).resize((112, 112), Image.Resampling.NEAREST).convert("RGB").save(path)  # any size, colour
    decodes = page.state()["decodes"]
    page.element("#upload").send_keys(str(path))
    encoded = page.settled(decodes + 1)
    assert encoded["base"] == "encoded" and "z=" in encoded["url"]
    expected = server.post("/v1/encode", {"model": "a", "image": base64.b64encode(path.read_bytes()).decode()})
    assert encoded["latents"] == expected["latents"]
    np.testing.assert_array_equal(shrink(page.shown("#image-view"), 28, 1), pixels(expected["image_png"]))
    step = lonely_step(encoded["decoded"]["parts"])
    page.click_cell(step["cell"], model)
    edited = page.settled(encoded["decodes"] + 1)
    assert edited["latents"]["whether"][step["step"]] is False and edited["base"] == "encoded"


def mnist_test_image(index: int) -> np.ndarray:
    """A real MNIST test digit (28×28 uint8) from the bundled copy."""
    with gzip.open(MNIST_RAW / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[index]


def test_draw_and_encode(page, models):
    from selenium.webdriver.common.action_chains import ActionChains

    page.open("model=a&seed=0")
    decodes = page.state()["decodes"]
    pad = page.element("#pad")
    chain = ActionChains(page.driver).move_to_element_with_offset(pad, 0, -70).click_and_hold()
    for y in range(-60, 80, 20):
        chain.move_to_element_with_offset(pad, 5, y)
    chain.release().perform()
    page.element("#pad-encode").click()
    encoded = page.settled(decodes + 1)
    assert encoded["base"] == "encoded"
    seen = pixels(page.js("return document.getElementById('encoded-input').src").split(",", 1)[1])
    assert seen.shape == (28, 28, 1) and seen[:, 12:16].max() > 200 and seen[:, :5].max() == 0  # a vertical stroke


def test_download_the_image_and_its_latents(page, models, server):
    page.open("model=a&seed=3&edits=r14")
    state = page.state()
    for name in os.listdir(page.driver.downloads):
        os.remove(page.driver.downloads / name)
    page.element("#download-latents").click()
    deadline = time.monotonic() + 10
    while not list(page.driver.downloads.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    [path] = page.driver.downloads.glob("*.json")
    assert path.name == "npdraw-a-seed3-1edits-latents.json"
    body = json.loads(path.read_text())
    assert body["latents"] == state["latents"] and body["source"]["edits"] == ["r14"] and body["source"]["seed"] == 3
    again = server.post("/v1/decode", body)  # the file is a decode request as it stands
    assert again["image_png"] == state["decoded"]["image_png"]
    link = page.element("#download-image")
    assert link.get_attribute("download") == "npdraw-a-seed3-1edits.png"
    assert link.get_attribute("href").split(",", 1)[1] == state["decoded"]["image_png"]


def test_a_colour_model_with_a_smaller_canvas(page, models):
    model = models["colour"]
    before = page.open("model=colour&seed=1").state()
    assert page.js("return document.getElementById('model').value") == "colour"
    image = shrink(page.shown("#image-view"), 64, 3)
    np.testing.assert_array_equal(image, pixels(before["decoded"]["image_png"]))
    np.testing.assert_array_equal(shrink(page.shown("#canvas-view"), 32, 3), pixels(before["decoded"]["canvas_png"]))
    step = lonely_step(before["decoded"]["parts"])
    page.click_cell(step["cell"], model)
    after = page.settled(before["decodes"] + 1)
    box = changed_box(pixels(before["decoded"]["canvas_png"]), pixels(after["decoded"]["canvas_png"]))
    assert box is not None and inside(box, step["box"], 32)
    # Switching the model in the menu starts over on that model's sample.
    from selenium.webdriver.support.ui import Select

    Select(page.element("#model")).select_by_value("a")
    switched = page.settled(after["decodes"] + 1)
    assert "model=a" in switched["url"] and len(switched["latents"]["whether"]) == 36


def test_screenshot_after_an_edit(page, models, tmp_path):
    """docs/studio.png: NPDRAW_STUDIO_SCREENSHOT=docs/studio.png pytest tests/test_studio.py -k screenshot."""
    before = page.open("model=a&seed=3").state()
    page.element(f"#palette canvas[data-exemplar='{7}']").click()
    step = lonely_step(before["decoded"]["parts"])
    page.click_cell(step["cell"], models["a"])
    page.settled(before["decodes"] + 1)
    page.hover_cell(step["cell"], models["a"])
    text = page.wait("return studio.hover !== null && document.getElementById('hover').textContent")
    assert f"part 7 at step {step['step']}" in text  # the hover shows the edited latents
    path = Path(os.environ.get("NPDRAW_STUDIO_SCREENSHOT") or tmp_path / "studio.png")
    assert page.driver.save_screenshot(str(path))
    assert Image.open(path).size == (1400, page.js("return window.innerHeight"))
