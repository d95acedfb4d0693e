"""Batched inference rendering (issue 9): B frames in one march/composite loop (head) and one field call (torso)
give, frame by frame, the pixels of the one-frame methods; on small random modules, PyTorch twins, CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.head_nerf import HeadNeRFModule
from lightning_modules.torso_nerf import TorsoNeRFModule
from networks.nerf.torso_field import TorsoField
from talkfield.inference import Knobs
from talkfield.motion import zscore

SIZE, W = 24, 3
HEAD_NET = dict(_target_="networks.nerf.HeadField", window=W, hidden=16, geo_dim=8, motion_hidden=16,
                landmark_dim=8, eye_dim=4, latent_dim=4, latent_max_frames=64, density_bias=1.0,
                grid=dict(num_levels=4, desired_resolution=32, log2_hashmap_size=10),
                ambient_grid=dict(num_levels=2, desired_resolution=16, log2_hashmap_size=8))
HEAD_CFG = dict(_target_="lightning_modules.head_nerf.HeadNeRFModule", network=HEAD_NET,
                renderer=dict(_target_="networks.nerf.VolumeRenderer", grid_resolution=16, max_steps=12,
                              backend="torch"),
                sr=dict(_target_="networks.nerf.SuperResolution", channels=4, blocks=1, up_channels=4),
                optimizer=None, render_size=SIZE, perceptual=dict(enabled=False))


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights, grids, codes and statistics strong enough that each frame's condition changes its pixels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.0 if "embeddings" in name else 0.5
            p.copy_((torch.rand(p.shape, generator=g) * 2 - 1) * scale)


def _head(seed: int = 0) -> HeadNeRFModule:
    from hydra.utils import instantiate

    head = instantiate(HEAD_CFG, _convert_="partial")
    _randomize(head, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        head.field.codes.set_num_train(20)
        head.motion_stats.copy_(torch.stack([torch.randn(204, generator=g) * 0.01, 0.02 + torch.rand(204, generator=g) * 0.02,
                                             torch.zeros(204), torch.zeros(204)]))
        grid = head.renderer.grid
        bits = torch.randint(0, 256, grid.bitfield.shape, generator=g, dtype=torch.int64)
        grid.bitfield.copy_((bits | torch.randint(0, 256, grid.bitfield.shape, generator=g)).to(torch.uint8))  # ~75%
    return head.eval()


def _inputs(B: int, seed: int = 3):
    """Cameras looking at the head from slightly different poses, raw offsets windows and eye openness."""
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4).repeat(B, 1, 1)
    c2w[:, 2, 3] = -4.0 + torch.rand(B, generator=g) * 0.5
    c2w[:, 0, 3] = (torch.rand(B, generator=g) - 0.5) * 0.4
    f = SIZE * 1.4
    K = torch.tensor([[f, 0, SIZE / 2], [0, f, SIZE / 2], [0, 0, 1.0]])
    motion = torch.randn(B, W, 68, 3, generator=g) * 0.05
    eye = torch.rand(B, W, generator=g)
    bg = torch.rand(B, SIZE, SIZE, 3, generator=g)
    return c2w, K, motion, eye, bg


def test_condition_is_the_contract_zscore():
    head = _head()
    _, _, motion, eye, _ = _inputs(4)
    z = zscore(motion, head.motion_stats.numpy())
    want = head.field.encode_condition(z, eye)[0]
    torch.testing.assert_close(head.condition(motion, eye), want, rtol=0, atol=0)
    torch.testing.assert_close(head.condition(motion.reshape(4, W, 204), eye), want, rtol=0, atol=0)


@pytest.mark.parametrize("frames", [[-1, -1, -1, -1, -1], [0, 5, -1, 19, 3]])
def test_batched_head_render_equals_one_frame_renders(frames):
    head = _head()
    B = len(frames)
    c2w, K, motion, eye, bg = _inputs(B)
    with torch.no_grad():
        got = head.render_heads(c2w, K, motion.reshape(B, W, 204), eye, torch.tensor(frames), bg, SIZE)
        one = [head.render_head(c2w[i], K, motion[i].reshape(W, 204), eye[i], frames[i], bg[i], SIZE)
               for i in range(B)]
    assert 0.05 < float(got["alpha"].mean()) < 0.95  # a partly transparent head: the test sees compositing
    for i, o in enumerate(one):
        for k in ("image", "rgb", "alpha", "depth"):
            torch.testing.assert_close(got[k][i], o[k], rtol=1e-4, atol=1e-4, msg=f"frame {i} {k}")
    # each frame used its own condition: the frames differ from each other
    assert float((got["rgb"][0] - got["rgb"][1]).abs().max()) > 1e-2
    # without a background: premultiplied head only
    with torch.no_grad():
        nobg = head.render_heads(c2w, K, motion.reshape(B, W, 204), eye, torch.tensor(frames), None, SIZE)
    torch.testing.assert_close(nobg["image"], got["rgb"], rtol=0, atol=0)


def test_batched_head_render_with_lazy_compaction_is_the_same(tmp_path):
    """infer.compact_every > 1 (finished rays retired in place between list compactions) renders the same frames;
    a value below 1 is refused before anything loads."""
    head = _head()
    B = 3
    c2w, K, motion, eye, bg = _inputs(B)
    out = {}
    for k in (1, 3):
        head.renderer.compact_every = k
        with torch.no_grad():
            out[k] = head.render_heads(c2w, K, motion.reshape(B, W, 204), eye, torch.tensor([0, -1, 4]), bg, SIZE)
    head.renderer.compact_every = 1
    for key in ("image", "alpha", "depth"):
        torch.testing.assert_close(out[3][key], out[1][key], rtol=1e-5, atol=1e-6)
    assert out[3]["num_samples"] > out[1]["num_samples"]  # retired rays still take (empty) sample slots
    from talkfield.inference import InferenceError, TalkingHeadPipeline
    with pytest.raises(InferenceError, match="infer.compact_every"):
        TalkingHeadPipeline.from_subject("nobody", data_dir=tmp_path, runs_dir=tmp_path, compact_every=0)


def _torso(seed: int = 5) -> TorsoNeRFModule:
    torso = TorsoNeRFModule(TorsoField(grid=dict(num_levels=4, desired_resolution=32, log2_hashmap_size=10),
                                       deform_hidden=16, hidden=16, latent_max_frames=64),
                            head_config=HEAD_CFG, render_size=SIZE, occupancy=dict(resolution=8, dilation=1))
    _randomize(torso.field, seed)
    src = _head(seed + 1)
    torso.head.load_state_dict(src.state_dict())
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        torso.field.codes.set_num_train(20)
        torso.jaw_mean.copy_(torch.randn(7, 3, generator=g) * 0.3)
        torso.pose_stats.copy_(torch.stack([torch.randn(9, generator=g) * 0.1, 0.5 + torch.rand(9, generator=g)]))
        occ = torch.rand(8, 8, generator=g)
        occ[:, :3] = 0.0  # the left of the image holds no torso: those pixels are never evaluated
        torso.occupancy.grid.copy_(occ)
        torso.occupancy.step.fill_(1)
    return torso.eval()


@pytest.mark.parametrize("per_frame_bg", [False, True])
def test_batched_head_and_torso_render_equals_one_frame_renders(per_frame_bg):
    torso = _torso()
    B = 4
    frames = [-1, 2, -1, 7]
    c2w, K, motion, eye, bg = _inputs(B, seed=9)
    plate = bg if per_frame_bg else bg[0]
    mot = motion.reshape(B, W, 204)
    with torch.no_grad():
        got = torso.render_frames(c2w, K, mot, eye, torch.tensor(frames), plate, SIZE)
        one = [torso.render_frame(c2w[i], K, mot[i], eye[i], frames[i], bg[i] if per_frame_bg else plate, SIZE)
               for i in range(B)]
    assert got.shape == (B, SIZE, SIZE, 3)
    for i, o in enumerate(one):
        torch.testing.assert_close(got[i], o, rtol=1e-4, atol=1e-4, msg=f"frame {i}")
    assert float((got[0] - got[1]).abs().max()) > 1e-2
    # the occupancy really skips pixels and the cached pixel set is the one render_torso uses
    from networks.nerf.torso_field import pixel_coords

    xy, idx = torso._pixels(SIZE)
    assert 0 < idx.numel() < SIZE * SIZE
    torch.testing.assert_close(idx, torso.occupancy.mask(pixel_coords(SIZE)).nonzero()[:, 0])
    # a mode switch forgets the cached pixels (training moves the occupancy grid)
    torso.train()
    assert torso._pixels_cache == {}
    torso.eval()


def test_frame_renderer_batches_equal_one_frame_batches():
    """The pipeline's FrameRenderer: a batch of B frames gives the frames of B one-frame batches (SR included)."""
    from types import SimpleNamespace

    from talkfield.inference import FrameRenderer

    torso = _torso()
    r = FrameRenderer.__new__(FrameRenderer)
    r.head, r.torso, r.device, r.sr = torso.head, torso, torch.device("cpu"), torso.sr
    r.size, r.out_size, r.window = SIZE, 2 * SIZE, W
    c2w, K, motion, eye, bg = _inputs(3, seed=11)
    r.K, r.plate = K, (bg[0] * 255).round().to(torch.uint8)
    r.ds = SimpleNamespace()
    args = (c2w.numpy(), motion.numpy(), eye.numpy(), np.arange(3))
    got = r.render(*args, bf16=False)
    one = torch.cat([r.render(*(a[i:i + 1] for a in args), bf16=False) for i in range(3)])
    assert got.dtype == torch.uint8 and got.shape == (3, 2 * SIZE, 2 * SIZE, 3)
    assert int((got.int() - one.int()).abs().max()) <= 1  # uint8 rounding of float-equal frames


# ----------------------------------------------------------------------------------------------------------------
# streaming: a backlog of waiting chunks is drained in batches
# ----------------------------------------------------------------------------------------------------------------
class _SlowRenderer:
    """Stands in for FrameRenderer: records each call's motion windows and takes `delay` seconds per call (slower
    than real time per frame, so chunks pile up while it renders)."""

    window = 3

    def __init__(self, delay: float):
        self.delay, self.calls = delay, []

    def render(self, c2w, motion, eye, src, bf16=True, timer=None):
        import time

        time.sleep(self.delay)
        self.calls.append(np.array(motion))
        return torch.zeros(len(c2w), 2, 2, 3, dtype=torch.uint8)


def _stream_pipeline(renderer, seed: int = 1):
    from talkfield.inference import TalkingHeadPipeline
    from tests.test_infer import _stream_pipe

    base = _stream_pipe(seed)
    pipe = TalkingHeadPipeline.__new__(TalkingHeadPipeline)
    pipe.a2m, pipe.person, pipe.stats, pipe.ds = base.a2m, base.person, base.stats, base.ds
    pipe.renderer = renderer
    pipe.c2w = np.repeat(np.eye(4, dtype=np.float32)[None], 10, 0)
    return pipe


def _live(wav: np.ndarray):
    """A live 40 ms source: chunk t arrives at 40 (t + 1) ms after the start."""
    from talkfield.inference import chunk_source

    return chunk_source(wav, realtime=True, block=640)


@pytest.mark.parametrize("full_lookahead", [False, True])
def test_stream_drains_a_backlog_in_batches(monkeypatch, full_lookahead):
    from talkfield.inference import StreamingMotion
    from tests.test_infer import speechlike

    wav = speechlike(2.0, 16000, seed=4)
    T = len(wav) // 640
    ref_pipe = _stream_pipeline(_SlowRenderer(0.0))
    la = ref_pipe.a2m.network.receptive_field() + 8 if full_lookahead else 2
    knobs = Knobs(lookahead=la, batch_frames=4, pose="static")
    refs = (-1.0, 150.0)  # a level model: the loud-frame mel level and the median f0
    monkeypatch.setattr(StreamingMotion, "_refs", lambda self: refs)  # the running references: tested elsewhere
    # a renderer 3x slower than real time per call: after the first slow step chunks wait, and are taken together
    slow = _SlowRenderer(0.12)
    seen = []
    stats = _stream_pipeline(slow).stream(_live(wav), knobs, on_frame=lambda t, f: seen.append(t))
    assert seen == list(range(T)) and len(stats.latencies) == T
    # chunks are taken several at a time once behind (how many wait at each step depends on the machine's load:
    # seen 3 on a loaded CI machine), never more than batch_frames, and every chunk exactly once
    assert 2 <= max(stats.pushes) <= 4 and sum(stats.pushes) == T
    assert max(stats.batches) == 4 and len(slow.calls) < T / 2
    # once rendering starts (chunk `lookahead_frames`) the renderer falls behind and steps take several chunks:
    # well under one step per chunk, which would let the backlog of a renderer slower per call than 40 ms grow with
    # the stream's length
    lf = stats.lookahead_frames
    assert len(stats.pushes) <= lf + (T - lf) // 2 + 6
    if full_lookahead:
        # look-ahead past the receptive field: the same motion whatever the steps (a per-chunk stream for reference)
        from tests.test_infer import streamed_motion

        want = streamed_motion(StreamingMotion(_stream_pipeline(_SlowRenderer(0.0)), knobs), wav)
        np.testing.assert_allclose(np.concatenate(slow.calls), want, atol=2e-3)


def test_chunk_feed_takes_what_waits_and_raises_source_errors():
    import time

    from talkfield.inference import ChunkFeed

    feed = ChunkFeed(((np.full(640, i, np.float32), float(i)) for i in range(10)), max_pending=64)
    time.sleep(0.3)  # everything has arrived
    got = feed.take(4)
    assert [a for _, a in got] == [0.0, 1.0, 2.0, 3.0]
    assert [a for _, a in feed.take(100)] == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert feed.take(4) is None
    feed.close()

    def broken():
        yield np.zeros(640, np.float32), 0.0
        raise OSError("microphone unplugged")

    feed = ChunkFeed(broken())
    time.sleep(0.2)
    with pytest.raises(OSError, match="unplugged"):
        while feed.take(4) is not None:
            pass
    feed.close()


def _samples(M: int, B: int, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    xyz = (torch.rand(M, 3, generator=g) * 2 - 1) * 0.3
    dirs = torch.nn.functional.normalize(torch.randn(M, 3, generator=g), dim=-1)
    return xyz, dirs, torch.randint(0, B, (M,), generator=g)


def test_per_image_projections_equal_per_sample_gathers():
    """HeadField(image=...): the condition and code projections once per image, gathered per sample, give the
    per-sample gather path (cond[image], code[image]) to float32 rounding."""
    head = _head()
    field, B = head.field, 5
    _, _, motion, eye, _ = _inputs(B)
    cond = head.condition(motion.reshape(B, W, 204), eye)
    code = field.codes(torch.tensor([0, 5, -1, 19, 3]))
    xyz, dirs, image = _samples(300, B)
    with torch.no_grad():
        want = field(xyz, dirs, cond[image], code[image])
        got = field(xyz, dirs, cond, code, image)
        geo_want, geo_got = field.geometry(xyz, cond[image]), field.geometry(xyz, cond, image)
        shifted = field(xyz, dirs, cond, code, (image + 1) % B)
    assert float((shifted[1] - want[1]).abs().max()) > 1e-3  # each sample's image matters
    for a, b in zip((*want, *geo_want), (*got, *geo_got)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_compiled_frames_field_equals_eager(monkeypatch):
    """compile_for_inference: the grad-free several-image field under torch.compile(fullgraph) (aot_eager on CPU:
    the same graph, no code generation), samples padded to a bucket, gives the eager field's numbers (the first M
    rows of the padded call) and the same batched render; with gradients the eager field runs."""
    from networks.nerf.compiled import BucketedCompile

    head, B = _head(), 4
    c2w, K, motion, eye, bg = _inputs(B)
    mot, frames = motion.reshape(B, W, 204), torch.tensor([-1, 2, -1, 7])
    cond, code = head.condition(mot, eye), head.field.codes(frames)
    xyz, dirs, image = _samples(100, B)
    with torch.no_grad():
        eager = head.frames_field_fn(cond, code)(xyz, dirs, image)
        eager_img = head.render_heads(c2w, K, mot, eye, frames, bg, SIZE)["image"]
    calls = []
    real_call = BucketedCompile.__call__
    monkeypatch.setattr(BucketedCompile, "__call__",
                        lambda self, *a: calls.append(a[0].shape[0]) or real_call(self, *a))
    assert head.compile_for_inference("default", bucket=64, backend="aot_eager")
    assert head._compiled_frames.padded_size(100) == 128
    with torch.no_grad():
        comp = head.frames_field_fn(cond, code)(xyz, dirs, image)
        comp_img = head.render_heads(c2w, K, mot, eye, frames, bg, SIZE)["image"]
    assert calls[0] == 100 and len(calls) > 1
    for a, b in zip(eager, comp):
        assert b.shape == a.shape
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(comp_img, eager_img, rtol=1e-5, atol=1e-5)
    n = len(calls)
    with torch.enable_grad():
        head.frames_field_fn(cond, code)(xyz, dirs, image)
    assert len(calls) == n
    assert not head.compile_for_inference("none")
    assert head._compiled_frames is None
