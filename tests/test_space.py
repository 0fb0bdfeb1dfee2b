"""The Space (spaces/lale): its README metadata, its examples, its API through gradio_client, and the page in a real
headless Chromium (Debian's chromium and chromium-driver, driven by selenium).

One app process serves every test of the module: `python spaces/lale/app.py` on 127.0.0.1 and a free port, with a
small upload limit (0.1 megapixels: a 256x256 patch passes, 512x512 does not).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train import REPO_ROOT, free_port


SPACE_DIR = REPO_ROOT / "spaces" / "lale"
MAX_MEGAPIXELS = 0.1
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STARTUP_TIMEOUT_S = 180
RESULT_TIMEOUT_S = 90
# Shares in the page are rounded to 2 decimals; the app and this test run the model in two processes.
SHARE_TOLERANCE = 0.02


def load_space_module(name: str):
    """A module of spaces/lale (not a package: the Space runs app.py from its own folder)."""
    if str(SPACE_DIR) not in sys.path:
        sys.path.insert(0, str(SPACE_DIR))
    spec = importlib.util.spec_from_file_location(f"lale_space_{name}", SPACE_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_patch(s2glc_sample: Path) -> Path:
    return s2glc_sample / "val" / "images" / "s2glc_00250.png"


def expected_shares(path: Path, checkpoint: Path, output_dir: Path, **settings) -> dict[str, float]:
    """Class label to percent, as `predict_paths` computes it for the same file and model."""
    from lale_hf.inference import predict_paths

    [stats] = predict_paths([path], checkpoint, output_dir, progress=False, **settings)
    return {item["label"]: item["percent"] for item in stats["classes"]}


def assert_shares_match(shown: dict[str, float], expected: dict[str, float]):
    assert set(shown) == set(expected)
    for label, percent in expected.items():
        assert abs(shown[label] - percent) <= SHARE_TOLERANCE, (label, shown[label], percent)
    assert len({round(p) for p in expected.values()}) > 1, "the model predicts a single class: a weak check"


# --- metadata and examples: no server needed ---------------------------------------------------------------------


def test_space_readme_yaml_names_the_model():
    from huggingface_hub import SpaceCard

    card = SpaceCard.load(SPACE_DIR / "README.md")
    app = load_space_module("app")
    assert card.data.sdk == "gradio"
    assert (SPACE_DIR / card.data.app_file).is_file() and card.data.app_file == "app.py"
    assert card.data.models == [app.DEFAULT_MODEL]
    assert card.data.license == "apache-2.0"
    import gradio

    assert card.data.sdk_version == gradio.__version__  # the Space runs the Gradio the tests ran
    requirements = (SPACE_DIR / "requirements.txt").read_text()
    assert "lale-hf[geo,space]" in requirements and "whl/cpu" in requirements


def test_examples_are_procedural_and_readable(tmp_path):
    import rasterio

    from lale_hf.inference import open_source

    rows, labels = load_space_module("space_examples").write_examples(tmp_path)
    assert len(labels) == len(rows) == 3
    files = [Path(row[0]) for row in rows]
    assert [f.suffix for f in files] == [".png", ".jpg", ".tif"]
    assert all(f.parent == tmp_path for f in files)  # generated, nothing copied from ../shared
    with rasterio.open(files[2]) as scene:
        assert (scene.count, scene.dtypes[0], scene.crs.to_string()) == (4, "uint16", "EPSG:32633")
    for path in files:
        source = open_source(path)
        assert (source.height, source.width) in ((256, 256), (512, 512))
        source.close()


def test_upload_checks(tmp_path):
    uploads = load_space_module("space_uploads")
    small = tmp_path / "small.png"
    Image.new("RGB", (256, 256)).save(small)
    assert uploads.check_upload(small, MAX_MEGAPIXELS) == uploads.UploadInfo(256, 256, projected=False)
    scene = load_space_module("space_examples").write_example_scene(tmp_path / "scene.tif", size=64)
    assert uploads.check_upload(scene, MAX_MEGAPIXELS) == uploads.UploadInfo(64, 64, projected=True)
    big = tmp_path / "big.png"
    Image.new("RGB", (512, 512)).save(big)
    with pytest.raises(uploads.UploadRejected, match=r"512x512 pixels \(0\.26 megapixels\).*at most 0\.1 megapixels"):
        uploads.check_upload(big, MAX_MEGAPIXELS)
    text = tmp_path / "notes.png"
    text.write_text("not an image\n")
    with pytest.raises(uploads.UploadRejected, match="notes.png is not an image"):
        uploads.check_upload(text, MAX_MEGAPIXELS)
    raster = tmp_path / "notes.tif"
    raster.write_text("not a raster\n")
    with pytest.raises(uploads.UploadRejected, match="notes.tif is not a raster"):
        uploads.check_upload(raster, MAX_MEGAPIXELS)


def test_predictions_share_one_queue_slot(tmp_path):
    """Upload and button events run in one concurrency pool of the queue: two visitors never predict at once."""
    app = load_space_module("app")
    demo = app.build_page(app.SegmentationPage(None, tmp_path, MAX_MEGAPIXELS), "model", ([], []), concurrency_limit=1)
    predictions = [fn for fn in demo.fns.values() if fn.name == "segment"]
    assert len(predictions) == 2
    assert {(fn.concurrency_id, fn.concurrency_limit, fn.queue) for fn in predictions} == {("predict", 1, True)}


def test_app_refuses_a_missing_model_with_exit_2(tmp_path, capsys):
    app = load_space_module("app")
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--model", str(tmp_path / "no-such-model"), "--work_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "error: --model" in stderr and "no-such-model" in stderr and "Traceback" not in stderr


# --- the running app ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def space_url(tiny_checkpoint, tmp_path_factory):
    """The app serving `tiny_checkpoint` (random weights whose predictions vary in space) on a free port."""
    work_dir = tmp_path_factory.mktemp("space")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    log = open(work_dir / "app.log", "w")
    command = [sys.executable, str(SPACE_DIR / "app.py"), "--model", str(tiny_checkpoint), "--port", str(port)]
    command += ["--host", "127.0.0.1", "--max_megapixels", str(MAX_MEGAPIXELS), "--work_dir", str(work_dir)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{(work_dir / 'app.log').read_text()}")
            try:
                with urllib.request.urlopen(url + "config", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer in {STARTUP_TIMEOUT_S} s:\n{(work_dir / 'app.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    assert process.returncode in (0, -15), (work_dir / "app.log").read_text()


@pytest.fixture(scope="module")
def client(space_url):
    from gradio_client import Client

    return Client(space_url, verbose=False)


def call_segment(client, path: Path, bands: str = "auto", scaling: str = "auto", tta: str = "none"):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), bands, scaling, 0.6, tta, api_name="/segment")


def table_shares(table: dict) -> dict[str, float]:
    column = table["headers"].index("share (%)")
    return {row[0]: float(row[column]) for row in table["data"]}


@pytest.mark.slow
def test_api_gives_the_area_table_of_predict_paths(client, s2glc_sample, tiny_checkpoint, tmp_path):
    patch = real_patch(s2glc_sample)
    map_image, legend, table, _chart, downloads, status, *_ = call_segment(client, patch)
    assert "predicted in" in status and patch.name in status
    assert_shares_match(table_shares(table), expected_shares(patch, tiny_checkpoint, tmp_path))
    assert "area (km²)" not in table["headers"]  # a PNG is not georeferenced
    assert Image.open(map_image).size == (256, 256)
    assert legend.count('class="legend-row"') == 7
    kinds = ["classes.png", "color.png", "stats.csv", "stats.json"]
    if "save_confidence" in load_space_module("app").EXTRA_OUTPUT_OPTIONS:
        kinds.append("confidence.tif")
    assert sorted(Path(path).name for path in downloads) == sorted(f"s2glc_00250_{kind}" for kind in kinds)
    stats = json.loads(next(Path(p) for p in downloads if p.endswith("_stats.json")).read_text())
    assert {c["label"]: round(c["percent"], 2) for c in stats["classes"]} == table_shares(table)


@pytest.mark.slow
def test_api_test_time_augmentation(client, s2glc_sample, tiny_checkpoint, tmp_path):
    if not load_space_module("app").HAS_TTA:
        pytest.skip("predict_paths has no tta option")
    patch = real_patch(s2glc_sample)
    _map, _legend, table, _chart, downloads, status = call_segment(client, patch, tta="flip")
    assert "TTA flip; predicted in" in status, status
    assert_shares_match(table_shares(table), expected_shares(patch, tiny_checkpoint, tmp_path, tta="flip"))
    stats = json.loads(next(Path(p) for p in downloads if p.endswith("_stats.json")).read_text())
    assert stats["prediction"]["tta"] == "flip"


@pytest.mark.slow
def test_api_georeferenced_scene_has_km2(client, tmp_path):
    scene = load_space_module("space_examples").write_example_scene(tmp_path / "scene-BGRN.tif", size=256)
    _map, _legend, table, _chart, downloads, status = call_segment(client, scene, bands="3,2,1")
    assert "bands 3,2,1, scaling patch_max_median" in status
    km2 = [row[table["headers"].index("area (km²)")] for row in table["data"]]
    assert sum(km2) == pytest.approx(256 * 256 * 100 / 1e6, rel=1e-3)  # 10 m pixels
    names = {Path(path).name for path in downloads}
    assert "scene-BGRN_classes.tif" in names
    app = load_space_module("app")
    if app.CAN_VECTORIZE:  # a projected CRS: the class polygons come as a GeoPackage
        assert "scene-BGRN_polygons.gpkg" in names
    if "save_confidence" in app.EXTRA_OUTPUT_OPTIONS:
        assert "scene-BGRN_confidence.tif" in names


@pytest.mark.slow
def test_api_bad_inputs_give_messages_and_the_server_keeps_serving(client, s2glc_sample, tmp_path):
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(real_patch(s2glc_sample).read_bytes()[:3000])
    two_bands = tmp_path / "two-bands.tif"
    import rasterio

    with rasterio.open(two_bands, "w", driver="GTiff", width=64, height=64, count=2, dtype="uint16") as dataset:
        dataset.write(np.full((2, 64, 64), 1000, dtype=np.uint16))
    cases = [
        (truncated, "auto", "truncated.png: cannot read it as an image"),
        (two_bands, "3,2,1", "two-bands.tif: has 2 band(s), but the RGB bands setting asks for band 3"),
        (two_bands, "auto", "two-bands.tif: has 2 bands and no red/green/blue colour interpretation"),
    ]
    for path, bands, message in cases:
        map_image, legend, table, _chart, downloads, status, *_ = call_segment(client, path, bands=bands)
        assert "Cannot segment this file." in status and message in status, status
        assert "Traceback" not in status and str(tmp_path) not in status
        assert map_image is None and downloads is None
    _, _, table, *_ = call_segment(client, real_patch(s2glc_sample))
    assert len(table["data"]) == 7


# --- the page in Chromium -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium; a missing browser fails under CI=true and skips elsewhere."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    if missing:
        message = f"no browser for the Space's page test: missing {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1700"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


class Page:
    """The app's page in the browser, by the elem_ids app.py gives its components."""

    def __init__(self, driver, url: str):
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        driver.get(url)
        self.wait = WebDriverWait(driver, RESULT_TIMEOUT_S, poll_frequency=0.2)
        self.wait.until(lambda d: d.find_elements("css selector", "#upload input[type=file]"))

    def status(self) -> str:
        return self.driver.find_element("id", "status").text

    def upload(self, path: Path) -> str:
        """Uploads through the page's file input (clearing a previous file first); returns the status once the
        request for this file has ended."""
        clear = self.driver.find_elements("css selector", "#upload button[aria-label='Clear']")
        if clear:
            clear[0].click()
            self.wait.until(lambda d: d.find_elements("css selector", "#upload input[type=file]"))
        self.driver.find_element("css selector", "#upload input[type=file]").send_keys(str(path))
        self.wait.until(lambda d: path.name in self.status() and self.idle())
        return self.status()

    def idle(self) -> bool:
        trackers = self.driver.find_elements("css selector", "#map [data-testid='status-tracker']")
        return all("hide" in tracker.get_attribute("class").split() for tracker in trackers)

    def table(self) -> dict[str, list[str]]:
        """The area table's body rows (class: other cells); the grid renders them as role=row, header first."""
        rows = self.driver.execute_script(
            "return Array.from(document.querySelectorAll('#areas [role=row][aria-rowindex]')).map(row => "
            "Array.from(row.querySelectorAll('[role=gridcell], td')).map(cell => cell.textContent.trim()))"
        )
        return {row[0]: row[1:] for row in rows if row}

    def map_image_loaded(self) -> bool:
        images = self.driver.find_elements("css selector", "#map img")
        return bool(images) and self.driver.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", images[0]
        )

    def map_pixels(self) -> np.ndarray:
        """The map image the page shows, fetched from the server."""
        import io

        source = self.driver.find_element("css selector", "#map img").get_attribute("src")
        with urllib.request.urlopen(source, timeout=30) as response:
            return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))

    def set_opacity(self, right_end: bool) -> np.ndarray:
        """Clicks an end of the opacity slider; returns the redrawn map once the server has sent it."""
        from selenium.webdriver.common.action_chains import ActionChains

        previous = self.driver.find_element("css selector", "#map img").get_attribute("src")
        slider = self.driver.find_element("css selector", "#opacity input[type=range]")
        offset = slider.size["width"] // 2 - 1
        ActionChains(self.driver).move_to_element_with_offset(
            slider, offset if right_end else -offset, 0
        ).click().perform()
        self.wait.until(
            lambda d: (
                d.find_element("css selector", "#map img").get_attribute("src") != previous and self.map_image_loaded()
            )
        )
        return self.map_pixels()

    def legend_labels(self) -> list[str]:
        return [row.text for row in self.driver.find_elements("css selector", "#legend .legend-row .legend-label")]

    def assert_result(self, expected: dict[str, float]):
        self.wait.until(lambda d: self.map_image_loaded() and self.table() and self.legend_labels())
        assert self.legend_labels() == list(expected)
        shown = {label: float(values[1]) for label, values in self.table().items()}  # columns: pixels, share
        assert_shares_match(shown, expected)
        chart = self.driver.find_elements("css selector", "#area-chart canvas, #area-chart svg")
        assert chart, "no bar chart"


@pytest.fixture(scope="module")
def patch_shares(s2glc_sample, tiny_checkpoint, tmp_path_factory):
    return expected_shares(real_patch(s2glc_sample), tiny_checkpoint, tmp_path_factory.mktemp("expected"))


@pytest.mark.slow
def test_page_shows_map_legend_and_area_table(browser, space_url, s2glc_sample, patch_shares, tmp_path):
    page = Page(browser, space_url)
    status = page.upload(real_patch(s2glc_sample))
    assert "predicted in" in status, status
    page.assert_result(patch_shares)
    screenshot = tmp_path / "space.png"
    assert browser.save_screenshot(str(screenshot)) and Image.open(screenshot).size[0] >= 1000
    # Opacity 0 shows the input itself; opacity 1 the class colours alone (the ARAS palette).
    patch_pixels = np.asarray(Image.open(real_patch(s2glc_sample)).convert("RGB"))
    assert np.array_equal(page.set_opacity(right_end=False), patch_pixels)
    from lale_hf.configuration_lale import ARAS400K_PALETTE

    colours = {tuple(color) for color in page.set_opacity(right_end=True).reshape(-1, 3).tolist()}
    assert len(colours) > 1 and colours <= {tuple(color) for color in ARAS400K_PALETTE}


@pytest.mark.slow
def test_page_text_file_as_image_then_a_valid_upload(browser, space_url, s2glc_sample, patch_shares, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("a shopping list, not an image\n")
    page = Page(browser, space_url)
    status = page.upload(text)
    assert "Cannot segment this file." in status and "notes.png is not an image this Space can read" in status
    assert "Traceback" not in page.driver.page_source
    assert not page.map_image_loaded() and not page.table()
    assert "predicted in" in page.upload(real_patch(s2glc_sample))
    page.assert_result(patch_shares)


@pytest.mark.slow
def test_page_oversized_image_then_a_valid_upload(browser, space_url, s2glc_sample, patch_shares, tmp_path):
    big = tmp_path / "big-scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)).save(big)
    page = Page(browser, space_url)
    status = page.upload(big)
    assert "big-scene.png is 512x512 pixels (0.26 megapixels); this Space accepts at most 0.1 megapixels" in status
    assert not page.map_image_loaded()
    assert "predicted in" in page.upload(real_patch(s2glc_sample))
    page.assert_result(patch_shares)


def test_views_blend_and_area_table():
    views = load_space_module("space_views")
    background = np.full((4, 4, 3), 200, dtype=np.uint8)
    colored = np.zeros((4, 4, 3), dtype=np.uint8)
    assert np.array_equal(views.blend(background, colored, 0.0), background)
    assert np.array_equal(views.blend(background, colored, 1.0), colored)
    assert views.blend(background, colored, 0.25)[0, 0, 0] == 150
    stats = {
        "total_km2": 0.0016,
        "prediction": {"palette": [[0, 100, 0], [0, 0, 255]]},
        "classes": [
            {"id": 0, "label": "Tree", "pixels": 12, "percent": 75.0, "km2": 0.0012},
            {"id": 1, "label": "Water", "pixels": 3, "percent": 18.75, "km2": 0.0003},
            {"id": 255, "label": "no data", "pixels": 1, "percent": 6.25, "km2": 0.0001},
        ],
    }
    table = views.area_table(stats)
    assert list(table.columns) == ["class", "pixels", "share (%)", "area (km²)"]
    assert table["share (%)"].tolist() == [75.0, 18.75, 6.25]
    assert views.area_chart(stats)[1] == "area (km²)"
    assert views.class_colors(stats) == {"Tree": "#006400", "Water": "#0000ff", "no data": "#000000"}
    assert views.colorize(np.array([[0, 1, 255]], dtype=np.uint8), stats).tolist() == [
        [[0, 100, 0], [0, 0, 255], [0, 0, 0]]
    ]


def test_display_layers_kept_on_disk(tmp_path):
    views = load_space_module("space_views")
    background = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    colored = background[::-1].copy()
    folder = views.save_layers(tmp_path, background, colored)
    kept = views.load_layers(folder)
    assert np.array_equal(kept[0], background) and np.array_equal(kept[1], colored)
    assert views.load_layers(None) is None and views.load_layers(str(tmp_path / "cleaned-away")) is None
    app = load_space_module("app")
    assert np.array_equal(app.restyle(folder, 0.0), background)
    assert app.restyle(str(tmp_path / "cleaned-away"), 0.5) == app.gr.update()  # the page keeps its map


@pytest.mark.slow
def test_page_example_runs(browser, space_url):
    page = Page(browser, space_url)
    buttons = page.driver.find_elements("css selector", "#examples button")
    labels = [button.text for button in buttons]
    assert any("GeoTIFF" in label for label in labels), labels
    next(button for button in buttons if "PNG" in button.text).click()
    page.wait.until(lambda d: "procedural-patch-3.png" in page.status() and page.idle())
    assert "predicted in" in page.status()
    page.wait.until(lambda d: page.map_image_loaded() and len(page.legend_labels()) == 7)
