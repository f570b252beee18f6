"""FID / FVD statistics with random feature networks (closed forms), the FID Inception-v3 and its
weight-file keys, the I3D TorchScript interface and clip preparation, identity similarity."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, run_cli

from anytalker.evaluation.fid import (
    FIDInceptionV3,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    inception_features,
    load_fid_inception,
)
from anytalker.evaluation.fvd import i3d_features, load_i3d, preprocess_clip, video_clips
from anytalker.evaluation.identity import (
    ARCFACE_TEMPLATE,
    ArcFaceONNX,
    DlibFaceEmbedder,
    align_face,
    identity_scores,
    similarity_transform,
)
from anytalker.evaluation.landmarks import GivenLandmarks
from anytalker.evaluation.tracking import track_faces
from anytalker.evaluation.weights import MissingWeightsError

IMAGE = Path(os.environ.get("ANYTALKER_SHARED_DIR", REPO_ROOT.parent / "shared")) / "examples" / "images" / "2p-0.png"




# --- Fréchet distance -----------------------------------------------------------------------------

def test_frechet_distance_closed_forms():
    # Diagonal Gaussians: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(9 + 1 + 1 + 0, abs=1e-9)
    # Scaled covariance: Tr(S + c^2 S - 2 c S) = (1 - c)^2 Tr S.
    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 5))
    sigma = m @ m.T + np.eye(5)
    assert frechet_distance(mu1[:1].repeat(5), sigma, mu1[:1].repeat(5), 9 * sigma) == pytest.approx(
        4 * np.trace(sigma), rel=1e-9)
    with pytest.raises(ValueError, match="disagree in shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_random_feature_network_identical_and_shifted_sets():
    """A random linear 'feature network' on Gaussian inputs: identical sets give 0; inputs shifted by
    s give features shifted by W s with the same covariance, so FID = |W s|^2 exactly."""
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(32, 12))  # 32-d inputs -> 12-d features

    def network(x):
        return x @ weights

    inputs = rng.normal(size=(400, 32))
    shift = rng.normal(size=32) * 0.3
    real = network(inputs)
    assert fid_from_features(real, real) == pytest.approx(0, abs=1e-8)
    assert fid_from_features(real, network(inputs + shift)) == pytest.approx(np.sum((shift @ weights) ** 2), rel=1e-6)
    # Two independent samples of one Gaussian: small but positive (sampling noise), never negative.
    other = network(rng.normal(size=(400, 32)))
    assert 0 < fid_from_features(real, other) < 0.1 * np.trace(feature_statistics(real)[1])
    with pytest.raises(ValueError, match="at least 2 feature vectors"):
        feature_statistics(real[:1])


# --- FID Inception-v3 -----------------------------------------------------------------------------

def test_fid_inception_layout_weight_file_and_features(tmp_path):
    torch.manual_seed(0)
    model = FIDInceptionV3().eval()
    # torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and with
    # 1008 classes instead of 1000 (+16,392) that is pytorch-fid's network.
    assert sum(p.numel() for p in model.parameters()) == 27_161_264 - 3_326_696 + 8 * 2049
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_5b.branch_pool.conv.weight"] == (32, 192, 1, 1)
    assert shapes["Mixed_7c.branch3x3dbl_3b.bn.running_var"] == (384,) and shapes["fc.weight"] == (1008, 2048)
    # The released file is a plain state dict, older than num_batches_tracked.
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    loaded = load_fid_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items()) and not loaded.training
    rng = np.random.default_rng(2)
    feats = inception_features(loaded, [rng.integers(0, 255, (80, 120, 3), dtype=np.uint8)])  # resized to 299
    assert feats.shape == (1, 2048) and (feats >= 0).all() and np.isfinite(feats).all()  # post-ReLU average pool
    torch.save({"model." + k: v for k, v in list(state.items())[:10]}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not pytorch-fid's FID Inception state dict"):
        load_fid_inception(tmp_path / "wrong.pth")
    code, _, err = run_cli(["eval", "fid", "--real", str(tmp_path), "--fake", str(tmp_path),
                            "--inception", str(tmp_path / "missing.pth")])
    assert code == 2 and "pt_inception-2015-12-05-6726825d.pth" in err and "--inception" in err
    assert "pytorch-fid" in err and "nothing is downloaded" in err


def test_inception_features_batches_and_scales_images():
    """Batching rules with a stand-in network (the mean of each channel): [0, 1] RGB input, one image
    size per batch, order kept."""

    def mean_rgb(x):
        return x.mean(dim=(2, 3))

    images = [np.full((8, 8, 3), v, np.uint8) for v in (0, 51, 255)] + [np.full((4, 6, 3), 102, np.uint8)]
    feats = inception_features(mean_rgb, images, batch_size=2)
    np.testing.assert_allclose(feats[:, 0], [0, 0.2, 1, 0.4], atol=1e-7)
    with pytest.raises(ValueError, match="expected uint8 RGB images"):
        inception_features(mean_rgb, [np.zeros((8, 8), np.uint8)])


# --- FVD ------------------------------------------------------------------------------------------

class StandInI3D(torch.nn.Module):
    """Random features with the I3D TorchScript call signature (the real file is user-supplied)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Conv3d(3, 8, kernel_size=(4, 16, 16), stride=(4, 16, 16))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        assert not rescale and not resize and return_features
        return self.proj(x).mean(dim=(2, 3, 4))


def test_fvd_clips_preprocessing_and_torchscript_loading(tmp_path):
    frames = np.zeros((40, 300, 448, 3), np.uint8)
    frames[:, :, 224 - 20:224 + 20] = 255  # a white vertical band at the centre
    clips = video_clips(frames)
    assert len(clips) == 2 and clips[1].shape[0] == 16  # 40 frames -> two 16-frame clips, 8 left over
    assert len(video_clips(frames, clips="first")) == 1
    with pytest.raises(ValueError, match="video has 10 frames, FVD clips need 16"):
        video_clips(frames[:10])
    clip = preprocess_clip(clips[0])
    assert clip.shape == (3, 16, 224, 224) and clip.min() == -1 and clip.max() == 1
    # 300 x 448 -> 224 x 335 (shorter side 224); the centre crop keeps the band (40 px -> ~30 px) centred.
    row = clip[0, 0, 112]
    bright = np.flatnonzero(row.numpy() > 0)
    assert row[0] == -1 and row[-1] == -1 and 29 <= len(bright) <= 31 and abs(bright.mean() - 111.5) <= 1

    torch.manual_seed(0)
    torch.jit.script(StandInI3D()).save(str(tmp_path / "i3d_torchscript.pt"))
    model = load_i3d(tmp_path / "i3d_torchscript.pt")
    rng = np.random.default_rng(3)
    real = [rng.integers(0, 255, (16, 64, 80, 3), dtype=np.uint8) for _ in range(12)]
    feats = i3d_features(model, real, batch_size=5)
    assert feats.shape == (12, 8)
    assert fid_from_features(feats, feats) == pytest.approx(0, abs=1e-8)
    (tmp_path / "not_torchscript.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_i3d(tmp_path / "not_torchscript.pt")
    with pytest.raises(MissingWeightsError, match=r"i3d_torchscript\.pt.*--i3d"):
        load_i3d(tmp_path / "nowhere.pt")


def test_cli_fvd_end_to_end(tmp_path):
    from anytalker.video import write_video

    torch.manual_seed(0)
    torch.jit.script(StandInI3D()).save(str(tmp_path / "i3d_torchscript.pt"))
    rng = np.random.default_rng(4)
    for folder in ("real", "fake"):
        (tmp_path / folder).mkdir()
    for i in range(3):
        video = rng.integers(0, 255, (32, 64, 64, 3), dtype=np.uint8)
        write_video(tmp_path / "real" / f"{i}.mp4", video, 25)
        (tmp_path / "fake" / f"{i}.mp4").symlink_to(tmp_path / "real" / f"{i}.mp4")
    code, out, err = run_cli(["eval", "fvd", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
                              "--i3d", str(tmp_path / "i3d_torchscript.pt"), "--json"])
    report = json.loads(out)
    assert code == 0, err
    assert report["real_clips"] == report["fake_clips"] == 6 and report["frames_per_clip"] == 16
    assert report["fvd"] == pytest.approx(0, abs=1e-6)


# --- identity -------------------------------------------------------------------------------------

def test_similarity_transform_and_alignment():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(5).uniform(0, 100, (5, 2))
    dst = src @ (scale * rotation).T + shift
    np.testing.assert_allclose(similarity_transform(src, dst), np.hstack([scale * rotation, shift[:, None]]),
                               atol=1e-10)
    # Five keypoints drawn as dots at twice the template's scale land on the template.
    image = np.zeros((300, 300, 3), np.uint8)
    points = ARCFACE_TEMPLATE * 2 + 40
    for x, y in points.round().astype(int):
        image[y - 2:y + 3, x - 2:x + 3] = 255
    face = align_face(image, points)
    for x, y in ARCFACE_TEMPLATE.round().astype(int):
        assert face[y, x].max() > 200


class MeanColour:
    """A stand-in embedder: the mean colour inside the box (so similarities are known)."""

    name = "mean-colour"

    def embed(self, frame, box, keypoints5):
        patch = frame[int(box.y0):int(box.y1), int(box.x0):int(box.x1)].reshape(-1, 3).mean(0)
        return patch / np.linalg.norm(patch)


def test_identity_scores_first_frame_and_reference():
    frames = np.zeros((6, 40, 80, 3), np.uint8)
    frames[:, :, :40] = (200, 0, 0)  # person 0: red throughout
    frames[:, :, 40:] = (0, 200, 0)  # person 1: green, turning yellow from frame 3 on
    frames[3:, :, 40:] = (200, 200, 0)
    boxes = np.tile([[[5.0, 5, 35, 35], [45, 5, 75, 35]]], (6, 1, 1))
    points = np.tile(boxes[..., None, :2], (1, 1, 22, 1))
    points[1, 0] = np.nan  # person 0 missing in frame 1
    tracks = track_faces([None] * 6, 2, GivenLandmarks(points, boxes))
    reference = [(frames[0], tracks_box, None) for tracks_box in
                 [FaceBoxFrom(boxes[0, 0]), FaceBoxFrom(boxes[0, 1])]]
    report = identity_scores(frames, tracks, MeanColour(), reference)
    person0, person1 = report["people"]
    assert person0["vs_first"] == pytest.approx(1.0) and person0["frames"] == 5 and person0["missing"] == 1
    yellow_vs_green = 1 / np.sqrt(2)
    assert person1["vs_first"] == pytest.approx((2 * 1 + 3 * yellow_vs_green) / 5)
    assert person1["vs_reference"] == pytest.approx((3 * 1 + 3 * yellow_vs_green) / 6)
    assert report["vs_first"] == pytest.approx((1 + person1["vs_first"]) / 2)
    every_other = identity_scores(frames, tracks, MeanColour(), stride=2)  # frames 0, 2, 4
    assert every_other["people"][1]["vs_first"] == pytest.approx((1 + yellow_vs_green) / 2)


def FaceBoxFrom(values):
    from anytalker.faces import FaceBox

    return FaceBox(*map(float, values))


def test_dlib_embedder_on_the_example_faces():
    if not IMAGE.is_file():
        pytest.skip(f"{IMAGE} absent (../shared/examples)")
    from anytalker.evaluation.landmarks import DlibLandmarks
    from anytalker.faces import load_image

    image = load_image(IMAGE)
    faces = sorted(DlibLandmarks().detect(image, 0, 2), key=lambda face: face.box.center[0])
    embedder = DlibFaceEmbedder()
    left, right = (embedder.embed(image, face.box, face.keypoints5) for face in faces)
    shifted = np.roll(image, (3, 5), axis=(0, 1))  # the same faces a few pixels away
    left_again = embedder.embed(shifted, FaceBoxFrom(np.array(faces[0].box.as_tuple()) + [5, 3, 5, 3]), None)
    # Measured: the same face shifted 1.000, the two different people 0.836. dlib's descriptors crowd
    # together (their Euclidean distance here is 0.57, under dlib's own "same person" limit of 0.6),
    # which is why this embedder is only an offline stand-in for ArcFace.
    assert float(left @ left_again) > 0.99 and float(left @ right) < 0.9


def test_arcface_onnx_runs_an_onnx_model(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    weight = rng.normal(size=(3 * 112 * 112, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["data"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["fc1"])],
        "tiny_arcface", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["N", 16])], [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "w600k_r50.onnx")
    embedder = ArcFaceONNX(tmp_path / "w600k_r50.onnx")
    image = rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)
    keypoints = ARCFACE_TEMPLATE + 30
    vector = embedder.embed(image, FaceBoxFrom([20, 20, 150, 150]), keypoints)
    face = align_face(image, keypoints).astype(np.float32)
    expected = (((face - 127.5) / 127.5).transpose(2, 0, 1).reshape(1, -1) @ weight)[0]
    np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs five face keypoints"):
        embedder.embed(image, FaceBoxFrom([20, 20, 150, 150]), None)
    with pytest.raises(MissingWeightsError, match=r"w600k_r50\.onnx.*InsightFace.*--arcface"):
        ArcFaceONNX(tmp_path / "nowhere")
