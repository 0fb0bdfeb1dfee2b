"""LALE land-cover segmentation in the browser: a Gradio app in the Hugging Face Spaces layout.

    python spaces/lale/app.py --model outputs/demo/lale-tiny --port 7860     # offline, a local checkpoint
    python spaces/lale/app.py --model org/lale-tiny                          # a Hub id (what the Space runs)

The model loads once at start. Each upload goes through `lale_hf.inference.predict_paths` into a fresh folder; the
page shows what it wrote (class raster, statistics JSON) and offers those files for download. No prediction logic
lives here: `space_uploads` checks the upload's size from its header, `space_views` draws the files.
"""

import argparse
import html
import inspect
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import gradio as gr

from lale_hf.inference import SCALING_METHODS, TTA_MODES, InferenceError, load_predictor, predict_paths


sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helper modules beside this file, however it is run

from space_examples import write_examples  # noqa: E402
from space_uploads import UploadRejected, check_upload, new_request_folder  # noqa: E402
from space_views import (  # noqa: E402
    area_chart,
    area_table,
    blend,
    class_colors,
    class_map_for_display,
    colorize,
    input_for_display,
    legend_html,
    load_layers,
    save_layers,
    save_png,
    summary_markdown,
)


logger = logging.getLogger("lale-space")

# The Hub model the Space runs (its README's `models:` names it); LALE_MODEL or --model choose another.
DEFAULT_MODEL = "org/lale-tiny"
DEFAULT_MAX_MEGAPIXELS = 16.0
DEFAULT_OPACITY = 0.6
PREDICT_PARAMETERS = set(inspect.signature(predict_paths).parameters)
# Options of `predict_paths` the page uses when the installed package has them: the visitor's TTA choice, and
# extra downloads (a confidence raster, a GeoPackage of class polygons). One line each.
HAS_TTA = "tta" in PREDICT_PARAMETERS
TTA_PASSES = {"flip": 4, "d4": 8}  # model passes per tile
TTA_CHOICES = [(f"{mode} ({TTA_PASSES[mode]}x slower)" if mode in TTA_PASSES else mode, mode) for mode in TTA_MODES]
EXTRA_OUTPUT_OPTIONS = {name: True for name in ("save_confidence",) if name in PREDICT_PARAMETERS}
# A GeoPackage of class polygons needs a projected CRS (areas in metres): asked for such rasters only.
CAN_VECTORIZE = "vectorize" in PREDICT_PARAMETERS
BAND_CHOICES = [
    ("The file's RGB (PNG, JPEG, RGB GeoTIFF)", "auto"),
    ("3,2,1: a B, G, R, NIR stack", "3,2,1"),
    ("4,3,2: Sentinel-2 bands B1, B2, B3, B4, ...", "4,3,2"),
    ("1,2,3", "1,2,3"),
]
SCALING_CHOICES = [
    ("auto: 8-bit as is, otherwise patch_max_median", "auto"),
    *[(method, method) for method in SCALING_METHODS if method != "auto"],
]
# Gradio shows the tqdm bars of predict_paths as the page's progress.
TQDM_PROGRESS = gr.Progress(track_tqdm=True)
# The command-line names in the package's messages, as the page calls those settings.
PAGE_SETTING_NAMES = {"--bands": "the RGB bands setting", "--scaling": "the scaling setting"}
CSS = """
#legend ul.legend { list-style: none; padding: 0; margin: 0; }
#legend .legend-row { display: flex; align-items: center; gap: 0.5em; margin: 0.15em 0; }
#legend .legend-swatch { width: 1.1em; height: 1.1em; border: 1px solid #444; display: inline-block; }
#status .error { color: #b00020; }
#map img { image-rendering: pixelated; }  /* class borders stay sharp when a small patch is enlarged */
"""


def band_choice(value: str | None):
    """`predict_paths`' bands from the dropdown: None for the file's own RGB, otherwise the text as typed."""
    value = (value or "auto").strip()
    return None if value.lower() == "auto" else value


def scaling_choice(value: str | None):
    """`predict_paths`' scaling from the dropdown: a method name, or a typed gain such as 0.085."""
    value = (value or "auto").strip()
    if value in SCALING_METHODS:
        return value
    try:
        return float(value)
    except ValueError:
        return value  # predict_paths refuses it with the list of methods


def readable(error: Exception, upload: Path) -> str:
    """The error's message with the server's upload path shortened to the file name, and page setting names."""
    message = str(error).replace(str(upload), upload.name)
    for option, name in PAGE_SETTING_NAMES.items():
        message = message.replace(option, name)
    return message


class SegmentationPage:
    """The page's handlers around one loaded model; every request writes into its own folder."""

    def __init__(self, predictor, output_root: Path, max_megapixels: float):
        self.predictor = predictor
        self.output_root = output_root
        self.max_megapixels = max_megapixels

    def segment(self, upload, bands, scaling, opacity, tta, progress=TQDM_PROGRESS):
        """Predicts the upload; returns map, legend, area table, chart, downloads, status and the layers' folder."""
        if not upload:
            return self._empty("Upload a PNG/JPEG patch or a GeoTIFF scene to see its land-cover map.")
        upload = Path(upload)
        progress(0.0, desc="Checking the upload")
        try:
            info = check_upload(upload, self.max_megapixels)
            options, tta = dict(EXTRA_OUTPUT_OPTIONS), str(tta or "none")
            if HAS_TTA:
                options["tta"] = tta
            if CAN_VECTORIZE and info.projected:
                options["vectorize"] = True
            output_dir = new_request_folder(self.output_root)
            started = time.perf_counter()
            [stats] = predict_paths(
                [upload],
                self.predictor,
                output_dir,
                bands=band_choice(bands),
                scaling=scaling_choice(scaling),
                progress=True,  # tqdm bars, which gr.Progress(track_tqdm=True) shows in the page
                **options,
            )
            seconds = time.perf_counter() - started
            progress(1.0, desc="Drawing the map")
            background = input_for_display(stats)
            colored = colorize(class_map_for_display(stats), stats)
            overlay = save_png(blend(background, colored, opacity), output_dir / f"{upload.stem}_overlay.png")
            layers = save_layers(output_dir, background, colored)
        except (UploadRejected, InferenceError, ValueError, OSError, ImportError) as error:
            return self._empty(readable(error, upload), error=True)
        except Exception as error:  # the page stays usable; the details go to the server log only
            logger.exception("prediction of %s failed", upload.name)
            return self._empty(f"{upload.name}: the prediction failed ({type(error).__name__}).", error=True)
        chart, value_column = area_chart(stats)
        # Every file predict_paths wrote, the colourised preview last.
        downloads = [path for _, path in sorted(stats["outputs"].items(), key=lambda item: item[0] == "color")]
        return (
            str(overlay),
            legend_html(stats),
            area_table(stats),
            gr.BarPlot(
                value=chart,
                x="class",
                y=value_column,
                color="class",
                color_map=class_colors(stats),
                sort=list(chart["class"]),
            ),
            downloads,
            summary_markdown(stats, seconds, tta),
            layers,
        )

    @staticmethod
    def _empty(message: str, error: bool = False):
        message = html.escape(message, quote=False)
        status = f'<p class="error"><strong>Cannot segment this file.</strong> {message}</p>' if error else message
        return None, "", None, None, None, status, None


def restyle(layers_folder, opacity):
    """The map at a new opacity, from the layers kept for this visitor's last result (no new prediction)."""
    layers = load_layers(layers_folder)
    return gr.update() if layers is None else blend(*layers, opacity)


def build_page(
    page: SegmentationPage, model_name: str, examples: tuple[list[list], list[str]], concurrency_limit: int
) -> gr.Blocks:
    # Gradio's copies of uploads and outputs older than an hour are deleted every hour, as the request folders are.
    with gr.Blocks(title="LALE land-cover segmentation", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# LALE land-cover segmentation\n"
            f"Model: `{model_name}`. Upload a Sentinel-2-like RGB patch (PNG/JPEG) or a GeoTIFF scene "
            f"(up to {page.max_megapixels:g} megapixels): the map shows one of seven land-cover classes per "
            "pixel. For a 16-bit multi-band raster choose which bands are red, green and blue (a B, G, R, NIR stack: "
            "3,2,1) and how to scale them to 8 bits."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image or GeoTIFF", elem_id="upload")
                bands = gr.Dropdown(
                    BAND_CHOICES, value="auto", label="RGB bands", allow_custom_value=True, elem_id="bands"
                )
                scaling = gr.Dropdown(
                    SCALING_CHOICES,
                    value="auto",
                    label="Scaling to 8 bits (or type a gain, e.g. 0.085)",
                    allow_custom_value=True,
                    elem_id="scaling",
                )
                tta = gr.Radio(
                    TTA_CHOICES,
                    value="none",
                    label="Test-time augmentation: logits averaged over flipped and rotated copies",
                    visible=HAS_TTA,
                    elem_id="tta",
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                gr.Examples(
                    examples[0],
                    inputs=[upload, bands, scaling],
                    example_labels=examples[1],
                    label="Examples (procedural, not satellite imagery)",
                    elem_id="examples",
                )
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                with gr.Row():
                    land_cover_map = gr.Image(
                        label="Land-cover map over the image",
                        format="png",
                        height=512,
                        interactive=False,
                        scale=3,
                        elem_id="map",
                    )
                    with gr.Column(scale=1, min_width=180):
                        legend = gr.HTML(elem_id="legend")
                        opacity = gr.Slider(
                            0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="Map opacity", elem_id="opacity"
                        )
                with gr.Row():
                    table = gr.Dataframe(label="Area per class", interactive=False, elem_id="areas")
                    chart = gr.BarPlot(label="Area per class", elem_id="area-chart")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
        layers = gr.State(None)  # the folder of the last result's display layers
        inputs = [upload, bands, scaling, opacity, tta]
        outputs = [land_cover_map, legend, table, chart, downloads, status, layers]
        # Every prediction event shares one concurrency slot pool, so visitors never oversubscribe the CPU.
        # The progress (tqdm's tile count, elapsed time) shows over the map alone.
        shared = {
            "concurrency_id": "predict",
            "concurrency_limit": concurrency_limit,
            "show_progress_on": [land_cover_map],
        }
        button.click(page.segment, inputs, outputs, api_name="segment", **shared)
        upload.change(page.segment, inputs, outputs, api_visibility="undocumented", **shared)
        opacity.release(restyle, [layers, opacity], land_cover_map, api_visibility="private", show_progress="hidden")
    return demo


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=os.environ.get("LALE_MODEL", DEFAULT_MODEL),
        help=f"checkpoint folder, Hub id or .onnx file (default: $LALE_MODEL or {DEFAULT_MODEL})",
    )
    parser.add_argument("--host", default=None, help="address to serve on (default: $GRADIO_SERVER_NAME or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    parser.add_argument("--max_megapixels", type=float, default=DEFAULT_MAX_MEGAPIXELS, help="largest upload")
    parser.add_argument("--concurrency_limit", type=int, default=1, help="predictions running at once")
    parser.add_argument("--max_queue", type=int, default=32, help="visitors waiting at most, then refused")
    parser.add_argument("--trust_remote_code", action="store_true", help="run a Hub checkpoint's own code")
    parser.add_argument("--work_dir", type=Path, default=None, help="outputs and examples (default: a temp folder)")
    args = parser.parse_args(argv)
    if args.max_megapixels <= 0 or args.concurrency_limit < 1 or args.max_queue < 1:
        parser.error("--max_megapixels, --concurrency_limit and --max_queue must be positive")
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        predictor = load_predictor(args.model, trust_remote_code=args.trust_remote_code)
    except (InferenceError, OSError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    work_dir = args.work_dir or Path(tempfile.gettempdir()) / "lale-space"
    examples = write_examples(work_dir / "examples")
    page = SegmentationPage(predictor, work_dir / "requests", args.max_megapixels)
    demo = build_page(page, args.model, examples, args.concurrency_limit)
    demo.queue(max_size=args.max_queue, default_concurrency_limit=args.concurrency_limit)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[str(work_dir)],
        max_file_size=f"{max(1, int(args.max_megapixels * 8))}mb",  # 16-bit, 4 bands, uncompressed
        ssr_mode=False,
        css=CSS,
    )


if __name__ == "__main__":
    main()
