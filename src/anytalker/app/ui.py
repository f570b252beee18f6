"""The Gradio page: reference image -> numbered faces -> one audio slot per face -> video.

Thin over the library: faces and slots are `anytalker.app.binding`; every input is checked by
`runner.prepare` before any model work; `runner.generate` samples (its `on_step` feeds the
progress bar, `should_stop` the cancel button) and `runner.write_output` writes mp4 + sidecar.
No `from __future__ import annotations` here: Gradio reads the handlers' annotations
(`gr.Request`) as real types.
"""

import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import gradio as gr

import anytalker.app.binding as binding  # the module itself: `from . import` names the package

from ..faces.detection import ORDERS
from ..pipeline import runner
from ..pipeline.settings import InputSettings, SamplingSettings, SettingsError, parse_size
from .binding import BindingError

EXAMPLE_PERSONS, EXAMPLE_FRAMES = 2, 49  # a ~2 s two-puppet scene: what puppets-tiny was trained on
FIELD_LABELS = {"size": "Size", "area": "Size", "fps": "FPS", "steps": "Steps", "guidance_scale": "Guidance scale",
                "audio_guidance_scale": "Audio guidance scale", "max_frames_per_window": "Window frames",
                "motion_frames": "Motion frames"}
HINT = "Upload a reference image: its faces are found and numbered, and one audio slot per face appears."


def _label(name: str) -> str:
    return FIELD_LABELS.get(name, name)


class _Model:
    """The loaded pipeline, or a factory called once at the first generation."""

    def __init__(self, model):
        self._model, self._lock = model, threading.Lock()

    def get(self) -> runner.LoadedPipeline:
        with self._lock:
            if not isinstance(self._model, runner.LoadedPipeline):
                self._model = self._model()
            return self._model


def _problem(message: str) -> str:
    gr.Warning(message)
    return f"**Error:** {message}"


def _slot_updates(faces: int, tracks, assignment, max_slots: int) -> list:
    """Visibility of every slot row, then every slot's face dropdown (choices + value)."""
    shown = binding.slot_count(faces, tracks)
    choices = [binding.face_choice(i) for i in range(faces)] + [binding.NO_FACE]
    rows = [gr.update(visible=i < shown) for i in range(max_slots)]
    menus = [gr.update(choices=choices, value=binding.face_choice(assignment[i] if i < len(assignment) else None))
             for i in range(max_slots)]
    return rows + menus


def _annotated(image, boxes, tracks, assignment):
    if image is None:
        return None
    return binding.draw(image, boxes, binding.face_labels(len(boxes), tracks, assignment))


def _friendly(message: str, image: str | None, tracks) -> str:
    """A runner message with the page's temporary file paths named as the page names them."""
    for slot, track in enumerate(tracks):
        if track:
            message = message.replace(track, f"audio slot {slot + 1} ({os.path.basename(track)})")
    return message.replace(image, "the image") if image else message


def build_app(model: runner.LoadedPipeline | Callable[[], runner.LoadedPipeline], *,
              inputs: InputSettings | None = None, defaults: dict | None = None,
              out_dir: str | os.PathLike | None = None, example_seed: int = 7,
              max_slots: int = binding.MAX_SLOTS) -> gr.Blocks:
    """The app's page. `model`: a LoadedPipeline (load it once at start) or a factory for one.
    `defaults`: the sampling defaults shown in Advanced (default: the loaded model's);
    `out_dir`: where videos are written (default: a new temporary folder; launch with it in
    `allowed_paths`)."""
    inputs = (inputs or InputSettings()).validate()
    holder = _Model(model)
    if defaults is None:
        defaults = model.defaults if isinstance(model, runner.LoadedPipeline) else runner.RELEASE_DEFAULTS
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="anytalker-app-"))
    stops: dict[str, threading.Event] = {}  # session -> its cancel flag

    with gr.Blocks(title="AnyTalker", analytics_enabled=False) as app:
        gr.Markdown("# AnyTalker\nOne reference image with N people, one audio track per person, a prompt: "
                    "a talking video. " + HINT)
        assignment = gr.State([])
        source = gr.State("")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", image_mode=None, format="png", label="Reference image",
                                 sources=["upload"], elem_id="image")
                example = gr.Button("Example puppet scene", size="sm", elem_id="example")
                order = gr.Radio(list(ORDERS), value=inputs.order, label="Face order (tracks bind in this order)",
                                 elem_id="order")
                boxes = gr.Textbox(label="Face boxes x0,y0,x1,y1, one per line: face #1 first", lines=3,
                                   elem_id="boxes", placeholder="detected boxes appear here; edit or add by hand")
                redraw = gr.Button("Apply boxes", size="sm", elem_id="redraw")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                with gr.Row():
                    audio_mode = gr.Radio(["pad", "concat"], value="pad", label="Audio mode", elem_id="audio-mode",
                                          info="pad: tracks share one timeline; concat: turns one after another")
                    offsets = gr.Textbox(label="Turn starts (concat, seconds)", placeholder="e.g. 0, 2.5",
                                         elem_id="offsets")
                with gr.Accordion("Advanced", open=False, elem_id="advanced"):
                    with gr.Row():
                        steps = gr.Number(defaults.get("steps"), label="Steps", precision=0, minimum=1,
                                          elem_id="steps")
                        guidance = gr.Number(defaults.get("guidance_scale"), label="Guidance scale",
                                             elem_id="guidance")
                        audio_guidance = gr.Number(None, label="Audio guidance scale", elem_id="audio-guidance",
                                                   info="0 or empty: one scale for text and audio")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, elem_id="seed")
                        size = gr.Textbox(label="Size HxW", elem_id="size",
                                          placeholder="empty: the image's aspect at the model's pixel budget")
                        fps = gr.Number(24, label="FPS", precision=0, minimum=1, elem_id="fps")
                    with gr.Row():
                        window = gr.Number(defaults.get("max_frames_per_window"), label="Window frames (4n+1)",
                                           precision=0, elem_id="window")
                        motion = gr.Number(5, label="Motion frames (4n+1)", precision=0, elem_id="motion")
                    # Speed options (step caches, torch.compile, quantisation) join here as one more Row.
            with gr.Column(scale=1):
                annotated = gr.Image(label="Binding: face number <- audio slot", interactive=False,
                                     elem_id="annotated", format="png")
                rows, tracks, menus = [], [], []
                for i in range(max_slots):
                    with gr.Row(visible=False, elem_id=f"slot-{i}") as row:
                        tracks.append(gr.Audio(type="filepath", sources=["upload"], label=f"Audio slot {i + 1}",
                                               elem_id=f"slot-audio-{i}", scale=3))
                        menus.append(gr.Dropdown([binding.face_choice(i), binding.NO_FACE],
                                                 value=binding.face_choice(i), label="drives", scale=1,
                                                 elem_id=f"slot-face-{i}", interactive=True))
                    rows.append(row)
                status = gr.Markdown(HINT, elem_id="status")
                with gr.Row():
                    run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                    cancel = gr.Button("Cancel", variant="stop", elem_id="cancel")
                video = gr.Video(label="Video", interactive=False, elem_id="video")
                files = gr.File(label="Video and sidecar JSON", file_count="multiple", interactive=False,
                                elem_id="files")

        view = [annotated, assignment, *rows, *menus]

        def show(image_path, face_boxes, slot_tracks, wanted):
            """The annotated image, the assignment and the slot updates for these faces and tracks."""
            slots = binding.slot_count(len(face_boxes), slot_tracks)
            kept = binding.valid_assignment(wanted, slots, len(face_boxes))
            return [_annotated(image_path, face_boxes, slot_tracks, kept), kept,
                    *_slot_updates(len(face_boxes), slot_tracks, kept, max_slots)]

        def on_upload(image_path, order_rule, *slot_tracks):
            if image_path is None:
                return ["", "", HINT, *show(None, [], slot_tracks, [])]
            try:
                found = binding.detect(image_path, order_rule, inputs.detectors, max_slots)
            except (BindingError, ValueError, OSError) as error:
                return ["", "", _problem(str(error)), *show(None, [], slot_tracks, [])]
            if not found.boxes:
                message = _problem(f"no face found in the image ({found.summary}): enter a box x0,y0,x1,y1 per "
                                   "face in Face boxes and press Apply boxes")
            else:
                message = f"{len(found)} face{'s' if len(found) > 1 else ''} found ({found.summary})."
            return [binding.format_boxes(found.boxes), found.source, message,
                    *show(image_path, found.boxes, slot_tracks, [])]

        def current_boxes(image_path, text):
            if image_path is None:
                raise BindingError("upload a reference image first")
            return binding.parse_boxes(text, binding.load_image(image_path).shape[:2])

        def on_order(image_path, order_rule, text, *slot_tracks):
            try:
                face_boxes = binding.order_boxes(current_boxes(image_path, text), order_rule)
            except BindingError as error:
                return [gr.skip(), _problem(str(error)), *[gr.skip()] * len(view)]
            return [binding.format_boxes(face_boxes), f"Faces renumbered {order_rule}.",
                    *show(image_path, face_boxes, slot_tracks, [])]

        def on_boxes(image_path, text, wanted, *slot_tracks):
            try:
                face_boxes = current_boxes(image_path, text)
            except BindingError as error:
                return [gr.skip(), _problem(str(error)), *[gr.skip()] * len(view)]
            return ["user", f"{len(face_boxes)} face box{'es' if len(face_boxes) != 1 else ''} applied.",
                    *show(image_path, face_boxes, slot_tracks, wanted)]

        def on_tracks(image_path, text, wanted, *slot_tracks):
            try:
                face_boxes = current_boxes(image_path, text) if image_path is not None else []
            except BindingError:
                face_boxes = []
            return show(image_path, face_boxes, slot_tracks, wanted)

        def on_menu(slot):
            def handler(image_path, text, wanted, choice, *slot_tracks):
                new = binding.reassign(wanted, slot, binding.face_index(choice))
                return on_tracks(image_path, text, new, *slot_tracks)
            return handler

        def on_example():
            from PIL import Image

            from ..puppets.dataset import make_scene, write_wav

            scene = make_scene(EXAMPLE_PERSONS, example_seed, frames=EXAMPLE_FRAMES)
            folder = out_dir / f"example-{example_seed}"
            folder.mkdir(parents=True, exist_ok=True)
            picture = folder / "puppets.png"
            Image.fromarray(scene.reference).save(picture)
            audio = [str(folder / f"puppet-{i + 1}.wav") for i in range(scene.persons)]
            for path, track in zip(audio, scene.tracks):
                write_wav(Path(path), track, scene.sample_rate)
            audio += [None] * (max_slots - len(audio))
            face_boxes = list(scene.face_boxes)
            height, width = scene.reference.shape[:2]
            return [str(picture), binding.format_boxes(face_boxes), "example", scene.caption, f"{height}x{width}",
                    f"Example puppet scene (seed {example_seed}): {scene.persons} puppets, their boxes and tracks.",
                    *audio, *show(str(picture), face_boxes, audio, [])]

        def on_generate(values: dict, request: gr.Request, progress=gr.Progress()):
            slot_tracks = [values[t] for t in tracks]
            image_path = values[image]
            stop = stops.setdefault(request.session_hash if request else "", threading.Event())
            stop.clear()
            try:
                face_boxes = current_boxes(image_path, values[boxes])
                bound = binding.bind(face_boxes, slot_tracks, values[assignment])
                sampling = SamplingSettings(
                    size=parse_size(values[size], "Size") if (values[size] or "").strip() else None,
                    fps=int(values[fps] or 24), steps=int(values[steps]) if values[steps] else None,
                    guidance_scale=values[guidance], audio_guidance_scale=values[audio_guidance] or None,
                    max_frames_per_window=int(values[window]) if values[window] else None,
                    motion_frames=int(values[motion] or 5), seed=int(values[seed] or 0)).validate(_label)
                name = time.strftime("app-%Y%m%d-%H%M%S")
                task = binding.to_task(name, image_path, bound, values[prompt] or "", values[audio_mode],
                                       binding.parse_offsets(values[offsets]))
                prepared = runner.prepare(task, inputs)
            except (BindingError, SettingsError, ValueError, FileNotFoundError, RuntimeError) as error:
                return None, None, _problem(_friendly(str(error), image_path, slot_tracks))
            progress(0, desc="loading the model")
            loaded = holder.get()
            started = time.perf_counter()

            def on_step(state):
                progress(state["fraction"], desc=f"window {state['window']}/{state['windows']}, "
                                                 f"step {state['step']}/{state['steps']}")

            try:
                result = runner.generate(loaded, prepared, sampling, on_step=on_step, should_stop=stop.is_set)
                out = runner.write_output(out_dir / f"{name}.mp4", result, prepared,
                                          app={"faces_from": values[source] or "user",
                                               "slots": [f"track {i + 1} -> face #{face + 1}"
                                                         for i, face in enumerate(bound.faces)]})
            except runner.GenerationCancelled:
                return None, None, "Cancelled: no video was written."
            except Exception as error:  # a model or write failure: say so in the page, keep the trace in the log
                traceback.print_exc()
                return None, None, _problem(f"generation failed: {type(error).__name__}: {error}")
            seconds = time.perf_counter() - started
            return (str(out), [str(out), str(out.with_suffix(".json"))],
                    f"Wrote {out.name}: {result.info['frames']} frames in {seconds:.1f} s.")

        def on_cancel(request: gr.Request):
            stops.setdefault(request.session_hash if request else "", threading.Event()).set()
            return "Cancelling after the current step..."

        image.upload(on_upload, [image, order, *tracks], [boxes, source, status, *view])
        image.clear(on_upload, [image, order, *tracks], [boxes, source, status, *view])
        order.input(on_order, [image, order, boxes, *tracks], [boxes, status, *view])
        for trigger in (redraw.click, boxes.blur):
            trigger(on_boxes, [image, boxes, assignment, *tracks], [source, status, *view])
        for slot, (track, menu) in enumerate(zip(tracks, menus)):
            track.change(on_tracks, [image, boxes, assignment, *tracks], view)
            menu.input(on_menu(slot), [image, boxes, assignment, menu, *tracks], view)
        example.click(on_example, None, [image, boxes, source, prompt, size, status, *tracks, *view])
        run_inputs = {image, boxes, assignment, source, prompt, audio_mode, offsets, steps, guidance, audio_guidance,
                      seed, size, fps, window, motion, *tracks}
        run_button.click(on_generate, run_inputs, [video, files, status], concurrency_limit=1,
                         concurrency_id="generate")
        cancel.click(on_cancel, None, status, queue=False)
    return app
