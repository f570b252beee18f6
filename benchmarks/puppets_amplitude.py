"""Where puppets-tiny loses mouth-opening amplitude: every stage measured on the same scenes.

The generated mouth opens less wide than the voices say (issue 15). This measures the amplitude
ratios of `anytalker.puppets.model.metrics` (std and max of the measured mouth opening, generated /
ground truth), with lip sync, flicker (frame difference outside the faces, / ground truth) and
Interactivity, side by side for:

    vae          the ground-truth render encoded and decoded by the model's VAE (the pixels' ceiling)
    dit x0 @ s   the DiT's one-step clean prediction from the ground-truth latents noised to sigma s
                 (x0 = x_s - s v): what the network itself predicts, no sampler involved
    sampling     puppets-tiny at 20 steps / flow shift 3 (the defaults), 40 steps, shifts 1 and 5
    audio cfg    a separate audio guidance scale (3 passes: cond, text only = zero audio, uncond);
                 guidance_scale 1 leaves text-only + s (cond - text-only). The model was trained
                 without condition dropout, so the zero-audio branch is out of its distribution.

section `vae`: each frame coded alone by the VAE (no temporal compression) vs the video coded as
the pipeline codes it, and the background flicker at the VAE's latent seams (frames 4k -> 4k+1)
vs elsewhere; and for long scenes: section `windows`, a 12 s scene in windows of the trained 49
frames vs ONE window of all its frames (what the demo used to ask for), and section `per-window`, a
20 s two-puppet scene's table per 49-frame window (lip sync, amplitude ratio, colour and face
distance to the reference image, pixel distance to the ground truth), each relative to the first
window, and section `carried`: the same scene with each later window given the ground truth's
frames at its start instead of the previous window's last frames.

    python benchmarks/puppets_amplitude.py [--scenes 3] [--threads 1]
        [--sections stages,dit,sampling,vae,windows,per-window,carried]

Scenes are held-out two-puppet scenes (the recipe's evaluation seeds 900000, 900001, ...), 49
frames (2 s, the trained length). Every generation uses seed 0. On a machine shared with other
jobs keep one thread (the default). Times are wall seconds per scene.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from anytalker.pipeline.schedule import plan_windows
from anytalker.pipeline.scheduling import make_scheduler
from anytalker.puppets.behaviour import MOUTH_LAG_FRAMES
from anytalker.puppets.dataset import make_scene
from anytalker.puppets.measure import correlation, measure_frames
from anytalker.puppets.model import evaluation_scenes, finite_mean, load_pipeline, scene_metrics, summarize_metrics
from anytalker.puppets.model.evaluation import generate_scene_result
from anytalker.puppets.model.metrics import mouth_amplitude, ratio

COLUMNS = (("lip_own", "lip own"), ("amplitude_std_ratio", "std ratio"), ("amplitude_max_ratio", "max ratio"),
           ("flicker_ratio", "flicker x"), ("interactivity", "Interactivity"), ("seconds", "s / scene"))
# name -> generate_scene_result keywords (plus "shift": the UniPC flow shift, release 3.0)
SAMPLING = {
    "20 steps, shift 3 (default)": {},
    "40 steps, shift 3": {"steps": 40},
    "20 steps, shift 1": {"shift": 1.0},
    "20 steps, shift 5": {"shift": 5.0},
    "audio guidance 2": {"audio_guidance_scale": 2.0},
    "audio guidance 4": {"audio_guidance_scale": 4.0},
}
SIGMAS = (0.25, 0.5, 0.75, 1.0)


def table(rows: list[tuple[str, dict]], columns=COLUMNS) -> str:
    lines = ["| | " + " | ".join(title for _, title in columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, values in rows:
        cells = []
        for key, _ in columns:
            value = values.get(key)
            cells.append("-" if value is None or not np.isfinite(value) else str(value) if isinstance(value, int)
                         else f"{value:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(results: list[dict], seconds: float) -> dict:
    return {**summarize_metrics(results), "seconds": seconds / max(1, len(results))}


def run_generated(pipe, scenes, shift: float = 3.0, **kwargs) -> dict:
    """Generates and scores every scene with `kwargs` (generate_scene_result) at flow shift `shift`."""
    kept = pipe.scheduler
    pipe.scheduler = make_scheduler("unipc", shift)
    try:
        start, results = time.perf_counter(), []
        for scene in scenes:
            frames = generate_scene_result(pipe, scene, **{"steps": 20, **kwargs}).frames
            results.append(scene_metrics(frames, scene))
        return summarize(results, time.perf_counter() - start)
    finally:
        pipe.scheduler = kept


def run_vae(pipe, scenes) -> dict:
    from anytalker.training.vae import reconstruct

    start = time.perf_counter()
    results = [scene_metrics(reconstruct(pipe.vae, scene.frames), scene) for scene in scenes]
    return summarize(results, time.perf_counter() - start)


def seam_flicker(frames: np.ndarray, face_boxes) -> tuple[float, float]:
    """Background frame difference (as metrics.background_flicker) at the Wan VAE's latent seams
    (frame 4k -> 4k+1: the first latent frame holds frame 0, each next one 4 frames) and elsewhere."""
    from anytalker.puppets.model.metrics import background_mask

    mask = background_mask(frames.shape[1:3], face_boxes)
    diffs = np.array([np.abs(frames[t + 1][mask].astype(np.int16) - frames[t][mask].astype(np.int16)).mean()
                      for t in range(frames.shape[0] - 1)])
    seams = np.arange(diffs.size) % 4 == 0
    return float(diffs[seams].mean()), float(diffs[~seams].mean())


def run_vae_split(pipe, scenes) -> list[tuple[str, dict]]:
    """The VAE's loss split: every frame coded alone (no temporal compression) vs the video coded
    as the pipeline codes it; and the flicker at latent seams vs elsewhere, also for the default
    generation (20 steps)."""
    from anytalker.training.vae import reconstruct

    kinds = {"ground-truth render": [], "VAE, each frame coded alone": [], "VAE encode + decode": [],
             "puppets-tiny, 20 steps, shift 3 (default)": []}
    for scene in scenes:
        videos = [scene.frames, np.concatenate([reconstruct(pipe.vae, frame[None]) for frame in scene.frames]),
                  reconstruct(pipe.vae, scene.frames), generate_scene_result(pipe, scene, steps=20).frames]
        for (name, results), frames in zip(kinds.items(), videos):
            seams, other = seam_flicker(frames, scene.face_boxes)
            results.append({**scene_metrics(frames, scene), "seam_flicker": seams, "other_flicker": other})
    rows = []
    for name, results in kinds.items():
        summary = summarize(results, float("nan"))
        summary["seam_flicker"] = finite_mean([r["seam_flicker"] for r in results])
        summary["other_flicker"] = finite_mean([r["other_flicker"] for r in results])
        rows.append((name, summary))
    return rows


SPLIT_COLUMNS = COLUMNS[:4] + (("flicker", "flicker"), ("seam_flicker", "at latent seams"),
                               ("other_flicker", "elsewhere"))


class _Captured(Exception):
    pass


def dit_inputs(pipe, scene) -> dict:
    """The pipeline's tensors for `scene` (one window): condition, embeddings, masks, audio."""
    from anytalker.faces.detection import square_box

    captured = {}

    def capture(pipeline, step, timestep, tensors):
        captured.update(tensors)
        raise _Captured

    height, width = scene.reference.shape[:2]
    boxes = [square_box(box, (height, width)) for box in scene.face_boxes]
    try:
        pipe(scene.reference, list(scene.tracks), boxes, prompt=scene.caption, height=height, width=width,
             fps=scene.fps, num_inference_steps=1, guidance_scale=1.0, max_frames_per_window=scene.num_frames,
             generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=capture,
             callback_on_step_end_tensor_inputs=pipe._callback_tensor_inputs)
    except _Captured:
        pass
    return captured


@torch.no_grad()
def run_dit(pipe, scenes, sigmas=SIGMAS) -> dict[float, dict]:
    """The DiT's clean prediction x0 = x_s - s v(x_s) from the ground truth's latents noised to s."""
    from anytalker.encoders.vae import decode_latents, encode_video

    results = {sigma: [] for sigma in sigmas}
    times = dict.fromkeys(sigmas, 0.0)
    for scene in scenes:
        tensors = dit_inputs(pipe, scene)
        pixels = torch.from_numpy(np.ascontiguousarray(scene.frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        clean = encode_video(pipe.vae, pixels)
        noise = torch.randn(clean.shape, generator=torch.Generator("cpu").manual_seed(0))
        for sigma in sigmas:
            start = time.perf_counter()
            noisy = (1 - sigma) * clean + sigma * noise
            velocity = pipe.predict_noise({**tensors, "latents": noisy}, torch.tensor(sigma * 1000.0), 1.0, None)
            video = decode_latents(pipe.vae, noisy - sigma * velocity)[0]
            frames = ((video.float() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()
            results[sigma].append(scene_metrics(frames, scene))
            times[sigma] += time.perf_counter() - start
    return {sigma: summarize(results[sigma], times[sigma]) for sigma in sigmas}


def colour_distance(frames: np.ndarray, reference: np.ndarray) -> float:
    """Mean over frames of |per-channel mean colour - the reference's| (0-255, channels averaged)."""
    means = np.asarray(frames, np.float64).mean(axis=(1, 2))
    return float(np.abs(means - np.asarray(reference, np.float64).mean(axis=(0, 1))).mean())


def face_distance(frames: np.ndarray, reference: np.ndarray, boxes) -> float:
    """Mean |frame - reference| (0-255) inside the puppets' face boxes: identity drift (hair, hat,
    skin), plus what the faces do (read it against the ground truth's own)."""
    reference = np.asarray(reference, np.int16)
    distances = []
    for box in boxes:
        x0, y0, x1, y1 = (int(round(v)) for v in (box.x0, box.y0, box.x1, box.y1))
        distances.append(np.abs(np.asarray(frames[:, y0:y1, x0:x1], np.int16) - reference[y0:y1, x0:x1]).mean())
    return float(np.mean(distances))


def span_rows(frames: np.ndarray, scene, spans) -> list[dict]:
    """Per frame span [a, b): lip sync (own track) and mouth std / max ratio of the puppets that
    speak in it (a silent puppet's correlation is undefined and its truth's spread ~0, which made
    ratios of 3-5 out of a still mouth), the generated mouth-height std of those that do not (px;
    the truth's is 0), colour distance to the reference (generated and ground truth), mean
    |generated - ground truth|, face distance to the reference (generated and ground truth)."""
    measured = measure_frames(frames, scene.face_boxes).mouth_height
    truth = measure_frames(scene.frames, scene.face_boxes).mouth_height
    envelope = np.asarray(scene.ground_truth["envelope"], np.float64)
    lag, rows = MOUTH_LAG_FRAMES, []
    for a, b in spans:
        speaking = [i for i in range(scene.persons) if envelope[i, a:b].std() > 1e-3]
        silent = [i for i in range(scene.persons) if i not in speaking]
        own = [correlation(measured[i, a + lag:b], envelope[i, a:b - lag]) for i in speaking]
        std, top = mouth_amplitude(measured[speaking, a:b])
        std_truth, top_truth = mouth_amplitude(truth[speaking, a:b])
        rows.append({
            "frames": f"{a}-{b - 1}", "speakers": len(speaking), "lip_own": finite_mean(own),
            "amplitude_std_ratio": finite_mean([ratio(x, y) for x, y in zip(std, std_truth)]),
            "amplitude_max_ratio": finite_mean([ratio(x, y) for x, y in zip(top, top_truth)]),
            "silent_std": finite_mean(mouth_amplitude(measured[silent, a:b])[0]) if silent else None,
            "colour": colour_distance(frames[a:b], scene.reference),
            "colour_truth": colour_distance(scene.frames[a:b], scene.reference),
            "pixels": float(np.abs(frames[a:b].astype(np.int16) - scene.frames[a:b].astype(np.int16)).mean()),
            "face": face_distance(frames[a:b], scene.reference, scene.face_boxes),
            "face_truth": face_distance(scene.frames[a:b], scene.reference, scene.face_boxes),
        })
    return rows


WINDOW_COLUMNS = (("speakers", "speakers"), ("lip_own", "lip own"), ("amplitude_std_ratio", "std ratio"),
                  ("amplitude_max_ratio", "max ratio"), ("silent_std", "silent mouth std px"), ("colour", "colour dist."),
                  ("colour_truth", "colour dist. (ground truth)"), ("face", "face dist."),
                  ("face_truth", "face dist. (ground truth)"), ("pixels", "|gen - gt|"), ("lip_vs_first", "lip / first"),
                  ("std_vs_first", "std ratio / first"))
# section `carried`: what each later window of the 20 s scene is given instead of the previous
# window's last frames (name -> frames taken from the ground-truth render, through the VAE or not)
CARRIED = {"the previous window's 5 (generation)": None, "ground truth's 5": (5, False),
           "ground truth's 5 through the VAE": (5, True), "ground truth's 1": (1, False)}
WINDOW_FRAMES, MOTION_FRAMES = 49, 5  # puppets-tiny's trained length; the frames each window carries over


def long_scene(seed: int, seconds: float):
    """The two-puppet scene of `seed` at about `seconds` (4n+1 frames)."""
    return make_scene(2, seed, frames=max(1, round(seconds * 24 / 4)) * 4 + 1)


def run_windows(pipe, long_seed: int = 11, long_seconds: float = 12.0) -> dict:
    """A long scene in trained windows vs one window."""
    out = {}
    scene = long_scene(long_seed, long_seconds)  # `anytalker demo --seed 11 --seconds 12`'s scene
    frames_long = scene.num_frames
    thirds = [(i * frames_long // 3, (i + 1) * frames_long // 3) for i in range(3)]
    for name, window in (("windows of 49", None), (f"one window of {frames_long}", frames_long)):
        start = time.perf_counter()
        result = generate_scene_result(pipe, scene, steps=20, max_frames_per_window=window, seed=long_seed)
        seconds = time.perf_counter() - start
        out[name] = {"whole": {**scene_metrics(result.frames, scene), "seconds": seconds},
                     "thirds": span_rows(result.frames, scene, thirds), "windows": len(result.info["windows"])}
    return out


def window_rows(result, scene) -> list[dict]:
    """span_rows of each window's own frames (its carried ones dropped), with lip sync and std
    ratio relative to the first window's."""
    spans = [(w["start"] + w["carried"], w["start"] + w["length"]) for w in result.info["windows"]]
    rows = span_rows(result.frames, scene, spans)
    for row in rows:
        row["lip_vs_first"] = row["lip_own"] / rows[0]["lip_own"]
        row["std_vs_first"] = row["amplitude_std_ratio"] / rows[0]["amplitude_std_ratio"]
    return rows


def run_per_window(pipe, table_seed: int = 900_100, table_seconds: float = 20.0) -> dict:
    """A 20 s scene in the model's trained windows, scored window by window against the first."""
    scene = long_scene(table_seed, table_seconds)
    result = generate_scene_result(pipe, scene, steps=20, seed=0)
    return {"seed": table_seed, "frames": scene.num_frames, "rows": window_rows(result, scene),
            "whole": scene_metrics(result.frames, scene)}


def run_carried(pipe, table_seed: int = 900_100, table_seconds: float = 20.0) -> dict:
    """The per-window scene again, each later window given the ground truth's frames at its start
    instead of the previous window's last ones: is a window weak because of what it is given
    (drift compounding) or because of what it must say?"""
    from anytalker.encoders.vae import encode_video
    from anytalker.pipeline.conditioning import pixels

    scene = long_scene(table_seed, table_seconds)
    truth = pixels(scene.frames)  # [1, 3, F, H, W]
    generate_window = pipe.prepare_latents
    windows = plan_windows(scene.num_frames, WINDOW_FRAMES, MOTION_FRAMES, pipe.vae_scale_factor_temporal)
    out = {}
    for name, given in CARRIED.items():
        def prepare_latents(regions, known, num_frames, generator, device, dtype):
            if given is not None and pipe.current_window > 0:
                count, through_vae = given
                start = windows[pipe.current_window].start
                known = truth[:, :, start:start + count]
                if through_vae:
                    known = pipe.decode(encode_video(pipe.vae, known))[None]
            return generate_window(regions, known, num_frames, generator, device, dtype)

        pipe.prepare_latents = prepare_latents
        try:
            result = generate_scene_result(pipe, scene, steps=20, seed=0, max_frames_per_window=WINDOW_FRAMES,
                                           motion_frames=MOTION_FRAMES)
        finally:
            pipe.prepare_latents = generate_window
        out[name] = window_rows(result, scene)
    return {"seed": table_seed, "frames": scene.num_frames, "modes": out}


def whole_video(whole: dict) -> str:
    """One line of a whole video's scene_metrics: lip own, std ratio (puppets averaged), flicker x."""
    return (f"lip own {finite_mean(whole['lip_own']):.2f}, std ratio {finite_mean(whole['amplitude_std_ratio']):.2f}, "
            f"flicker x {whole['flicker_ratio']:.2f}")


def print_windows(out: dict) -> None:
    print("\n### Long scene: trained windows vs one window (thirds of the video)\n")
    for name in out:
        whole = out[name]["whole"]
        print(f"{name} ({out[name]['windows']} window(s), {whole['seconds']:.0f} s): {whole_video(whole)}\n")
        print(table([(row["frames"], row) for row in out[name]["thirds"]], WINDOW_COLUMNS[:-2]) + "\n")


def print_carried(carried: dict) -> None:
    modes = carried["modes"]
    print(f"\n### {carried['frames']}-frame scene (seed {carried['seed']}): lip own per window, by what each later "
          f"window is given\n")
    rows = [(row["frames"], {name: modes[name][index]["lip_own"] for name in modes})
            for index, row in enumerate(next(iter(modes.values())))]
    rows.append(("\\|gen - gt\\|, last window", {name: modes[name][-1]["pixels"] for name in modes}))
    print(table(rows, [(name, name) for name in modes]))


def print_per_window(per: dict) -> None:
    print(f"### {per['frames']}-frame two-puppet scene (seed {per['seed']}), per 49-frame window: whole video "
          f"{whole_video(per['whole'])}\n")
    print(table([(row["frames"], row) for row in per["rows"]], WINDOW_COLUMNS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=3, help="held-out two-puppet scenes (default 3)")
    parser.add_argument("--sections", default="stages,dit,sampling,vae,windows,per-window,carried",
                        help="comma-separated: stages (truth, VAE, default sampling), dit, sampling, vae (frame "
                             "by frame, latent-seam flicker), windows (12 s: trained windows vs one), "
                             "per-window (20 s), carried (the 20 s scene given the ground truth's frames)")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the bundled puppets-tiny)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write every number to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = set(args.sections.split(","))
    pipe = load_pipeline(args.model)
    scenes = evaluation_scenes(args.scenes, 2, 900_000, 49)
    results: dict = {}
    rows: list[tuple[str, dict]] = []
    if sections & {"stages", "sampling"}:
        truth = summarize([scene_metrics(s.frames, s) for s in scenes], 0.0)
        rows.append(("ground-truth render", truth))
        results["ground truth"] = truth
    if "stages" in sections:
        results["vae"] = run_vae(pipe, scenes)
        rows.append(("VAE encode + decode", results["vae"]))
    if "dit" in sections:
        for sigma, summary in run_dit(pipe, scenes).items():
            results[f"dit x0 @ sigma {sigma}"] = summary
            rows.append((f"DiT one-step x0 from truth noised to sigma {sigma}", summary))
    chosen = SAMPLING if "sampling" in sections else ({k: SAMPLING[k] for k in list(SAMPLING)[:1]}
                                                        if "stages" in sections else {})
    for name, kwargs in chosen.items():
        results[name] = run_generated(pipe, scenes, **kwargs)
        rows.append((f"puppets-tiny, {name}", results[name]))
    if rows:
        print(f"### {len(scenes)} held-out two-puppet scenes (seeds 900000-{900000 + len(scenes) - 1}, 49 frames)\n")
        print(table(rows))
    if "vae" in sections:
        split = run_vae_split(pipe, scenes)
        results["vae_split"] = dict(split)
        print("\n### The VAE's share, and flicker at the VAE's latent seams (frame 4k -> 4k+1; 0-255)\n")
        print(table(split, SPLIT_COLUMNS))
    if "windows" in sections:
        results["windows"] = run_windows(pipe)
        print_windows(results["windows"])
    if "per-window" in sections:
        results["per_window"] = run_per_window(pipe)
        print_per_window(results["per_window"])
    if "carried" in sections:
        results["carried"] = run_carried(pipe)
        print_carried(results["carried"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=1, default=float)


if __name__ == "__main__":
    main()
