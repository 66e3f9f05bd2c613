"""``python -m dreamshot video clip|transition|restyle``: shot clips, transitions and restyling.

    python -m dreamshot video clip --prompt "a lighthouse at dusk" --shot long --alpha 0.8 --frames 16 --fps 8 --out clip/
    python -m dreamshot video clip --prompt "a dancer" --camera zoom-in --camera-strength 0.8 --out zoom/
    python -m dreamshot video transition --prompt "a woman on a bridge" --from long --to close --frames 16 --out trans/
    python -m dreamshot video transition ... --auto --judge-clip openai/clip-vit-base-patch32   # judge-steered
        (the Evaluate judge: the probe trained on the studio's labeled frames, else zero-shot CLIP)
    python -m dreamshot video restyle in.mp4 --shot close --control canny --seed-policy fixed --max-frames 48 --out re/

Each takes the generation flags (--width --height --steps --cfg --sampler --seed --negative
--no-template) and the studio settings (--data, --model, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dreamshot.video import clip as clips
from dreamshot.video.base import SAMPLERS


def _generation_flags(p: argparse.ArgumentParser, *, sampler: str, steps: int, cfg: float, side: int) -> None:
    g = p.add_argument_group("generation settings (as for generate)")
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--no-template", action="store_true", help="use the prompt as is (no shot template)")
    g.add_argument("--sampler", default=sampler, choices=list(SAMPLERS), metavar="NAME",
                   help=f"one of: {', '.join(SAMPLERS)} [{sampler}]")
    g.add_argument("--steps", type=int, default=steps, help=f"[{steps}]")
    g.add_argument("--cfg", type=float, default=cfg, help=f"CFG scale [{cfg:g}]")
    g.add_argument("--width", type=int, default=side, help=f"multiple of 8 [{side}]")
    g.add_argument("--height", type=int, default=side, help=f"multiple of 8 [{side}]")
    g.add_argument("--seed", type=int, default=-1, help="-1 = random; the seed used is printed [-1]")


def _clip_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", "-p", required=True, help="the caption / prompt")
    p.add_argument("--frames", type=int, default=16, help=f"clip length, 2-{clips.MAX_CLIP_FRAMES} [16]")
    p.add_argument("--fps", type=float, default=8.0, help="frame rate of the MP4/GIF [8]")
    p.add_argument("--camera", default=None, metavar="MOVE", help=f"camera move: {', '.join(clips.CAMERA_MOVES)}")
    p.add_argument("--camera-strength", type=float, default=1.0, help="camera-move LoRA strength, 0-1.5 [1]")
    p.add_argument("--motion-adapter", default=None, metavar="ID|DIR",
                   help=f"AnimateDiff motion adapter [{clips.DEFAULT_MOTION_ADAPTER}; 'demo' on the demo model]")
    p.add_argument("--out", type=Path, default=None, help="folder for clip.mp4, clip.gif, clip.txt, clip.json")


def register(sub, parents) -> None:
    from dreamshot.video.service import DEFAULT_SAMPLER

    video = sub.add_parser("video", help="shot clips, camera moves, transitions, restyle a video",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vsub = video.add_subparsers(dest="video_command", required=True)

    p = vsub.add_parser("clip", parents=parents, help="a shot clip (AnimateDiff), optionally with a camera move")
    _clip_flags(p)
    p.add_argument("--shot", default=None, help="shot type or LoRA name; omit for the base model")
    p.add_argument("--alpha", type=float, default=1.0, help="shot LoRA strength α [1]")
    _generation_flags(p, sampler=DEFAULT_SAMPLER, steps=20, cfg=7.5, side=512)
    p.set_defaults(run=run_clip)

    p = vsub.add_parser("transition", parents=parents, help="a clip whose shot LoRA weights move from one shot type to another")
    _clip_flags(p)
    p.add_argument("--from", dest="shot", required=True, help="shot type (or LoRA) at the first frame")
    p.add_argument("--to", dest="to_shot", required=True, help="shot type (or LoRA) at the last frame")
    p.add_argument("--alpha", type=float, default=1.0, help="LoRA strength α of the pair [1]")
    p.add_argument("--start", type=float, default=0.0, help="share of --to at the first frame [0]")
    p.add_argument("--end", type=float, default=1.0, help="share of --to at the last frame [1]")
    p.add_argument("--keyframes", default="", help="frame:share pairs, e.g. '0:0, 10:0.3, 15:1' (overrides --start/--end)")
    p.add_argument("--auto", action="store_true", help="steer the weights frame by frame with the shot-type judge "
                   "(Evaluate's: a probe on the labeled frames when it can be trained, else zero-shot CLIP)")
    p.add_argument("--rounds", type=int, default=3, help="automatic mode: generate-judge-correct rounds [3]")
    p.add_argument("--judge-clip", default=None, metavar="ID|DIR", help="automatic mode: CLIP model of the judge")
    _generation_flags(p, sampler=DEFAULT_SAMPLER, steps=20, cfg=7.5, side=512)
    p.set_defaults(run=run_transition)

    p = vsub.add_parser("restyle", parents=parents, help="restyle a video frame by frame; writes metrics.json")
    p.add_argument("video", type=Path, help="input video (MP4, AVI, MOV, ...)")
    p.add_argument("--prompt", "-p", default="a cinematic film still", help="caption of the new look")
    p.add_argument("--shot", default=None, help="shot LoRA (shot type or LoRA name)")
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--control", default="none", choices=["none", "img2img", "canny", "depth"],
                   help="none/img2img: plain img2img; canny/depth: ControlNet on the frame's edges/depth map "
                        "(depth model: DREAMSHOT_DEPTH_MODEL) [none]")
    p.add_argument("--controlnet", default=None, metavar="ID|DIR",
                   help="ControlNet for --control canny|depth [DREAMSHOT_CONTROLNET_<KIND>, else Generate's default]")
    p.add_argument("--strength", type=float, default=0.6, help="img2img denoising strength (0-1] [0.6]")
    p.add_argument("--seed-policy", default="fixed", choices=["fixed", "per-frame", "both"],
                   help="both: run each into OUT/fixed and OUT/per-frame and write OUT/comparison.json [fixed]")
    p.add_argument("--max-frames", type=int, default=None, help="restyle only the first N frames")
    p.add_argument("--max-seconds", type=float, default=None, help="refuse longer inputs [120]")
    p.add_argument("--chunk", type=int, default=8, help="frames per batch; progress is saved after each [8]")
    p.add_argument("--restart", action="store_true", help="discard another restyle's frames in --out")
    p.add_argument("--out", type=Path, default=None, help="output folder (run again with it to resume)")
    _generation_flags(p, sampler=DEFAULT_SAMPLER, steps=16, cfg=6.0, side=512)
    p.set_defaults(run=run_restyle)


def _progress(fraction: float, text: str) -> None:
    print(f"\r{fraction * 100:5.1f}%  {text:<48}", end="", file=sys.stderr, flush=True)


def _clip_request(args, **extra):
    from dreamshot.video.service import ClipRequest

    return ClipRequest(
        prompt=args.prompt, shot=args.shot, alpha=args.alpha, camera=args.camera,
        camera_strength=args.camera_strength, frames=args.frames, fps=args.fps,
        use_template=not args.no_template, negative_prompt=args.negative, sampler=args.sampler,
        steps=args.steps, cfg=args.cfg, width=args.width, height=args.height, seed=args.seed,
        motion_adapter=args.motion_adapter, **extra)


def _save_and_print(svc, result, out: Path | None) -> int:
    from dreamshot.video.service import save_clip

    save_clip(result, out or svc.output_folder(result.request.seed))
    print(file=sys.stderr)
    print(f"{result.folder / 'clip.mp4'}\n{result.folder / 'clip.gif'}\n"
          f"{result.request.frames} frames at {result.request.fps:g} fps, seed {result.request.seed}")
    if result.judged_shots:
        print(f"judge: {result.judge}\njudged shot per frame: " + " ".join(result.judged_shots))
    return 0


def run_clip(studio, args) -> int:
    from dreamshot.video.service import service

    svc = service(studio)
    with svc.gen.job("cli", progress=_progress) as job:
        result = svc.clip(_clip_request(args), job, save=False)
    return _save_and_print(svc, result, args.out)


def run_transition(studio, args) -> int:
    from dreamshot.video.service import service

    svc = service(studio)
    req = _clip_request(args, to_shot=args.to_shot, start=args.start, end=args.end, keyframes=args.keyframes)
    judge = svc.transition_judge(req, args.judge_clip) if args.auto else None
    with svc.gen.job("cli", progress=_progress) as job:
        result = svc.clip(req, job, judge=judge, rounds=args.rounds, save=False)
    return _save_and_print(svc, result, args.out)


def run_restyle(studio, args) -> int:
    from dreamshot.video import media
    from dreamshot.video.restyle import RestyleRequest
    from dreamshot.video.service import service

    svc = service(studio)
    req = RestyleRequest(
        video=args.video, prompt=args.prompt, shot=args.shot, alpha=args.alpha, use_template=not args.no_template,
        negative_prompt=args.negative, control=args.control, strength=args.strength, seed_policy=args.seed_policy,
        seed=args.seed, sampler=args.sampler, steps=args.steps, cfg=args.cfg, width=args.width, height=args.height,
        max_frames=args.max_frames, max_seconds=args.max_seconds or media.MAX_SECONDS, chunk=args.chunk,
        controlnet=args.controlnet, out_dir=args.out, restart=args.restart)
    if args.seed_policy == "both":
        from dataclasses import replace

        from dreamshot.video.restyle import compare_seed_policies

        with svc.gen.job("cli", progress=_progress) as job:
            results = compare_seed_policies(svc, replace(req, seed_policy="fixed"), job)
        print(file=sys.stderr)
        for policy, result in results.items():
            print(json.dumps({"seed_policy": policy, "video": str(result.video), **{
                k: round(result.metrics[k]["mean"], 5) for k in ("psnr", "t_ssim", "warp_error")}}))
        return 0
    with svc.gen.job("cli", progress=_progress) as job:
        result = svc.restyle(req, job)
    print(file=sys.stderr)
    m = result.metrics
    print(f"{result.video}\n{result.folder / 'metrics.json'}\n{result.plot}")
    print(json.dumps({"frames": result.frames, "fps": result.fps, "resumed_from": result.resumed_from,
                      **{k: round(m[k]["mean"], 5) for k in ("psnr", "t_ssim", "warp_error")}}))
    return 0
