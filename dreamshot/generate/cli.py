"""Subcommands of ``python -m dreamshot`` for generation: generate, sweep, storyboard, read-png, loras.

    python -m dreamshot generate --data D --prompt "a woman reading" --shot close --alpha 0.8 --seed 42
    python -m dreamshot sweep --prompt "a man on a bridge" --shots close,medium,long --alphas 0,0.5,1
    python -m dreamshot storyboard board.txt --out board/      # lines: "shot | description [| sketch.png]"
    python -m dreamshot generate --prompt "a man on a bridge" --control canny --control-image frame.jpg
    python -m dreamshot read-png image.png
    python -m dreamshot loras add my_lora.safetensors --name noir --shot close
    python -m dreamshot loras add learned_embeds.safetensors --name close_ti --shot close --token close-shot
    python -m dreamshot generate --prompt "a woman reading" --embedding close_ti [--shot close --alpha 0.8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from dreamshot.generate.request import cut_off
from dreamshot.generate.service import DEFAULT_SAMPLER, SAMPLERS, GenerationRequest, parse_blend


def _request_arguments(parser: argparse.ArgumentParser, *, prompt: bool = True) -> None:
    g = parser.add_argument_group("generation settings")
    if prompt:
        g.add_argument("--prompt", "-p", required=True, help="the caption / prompt")
        g.add_argument("--shot", default=None, help="shot type (close, medium, ...) or LoRA name; omit for the base model")
        g.add_argument("--alpha", type=float, default=1.0, help="LoRA strength α, 0-1.5 [1]")
        g.add_argument("--blend", default="", help="several LoRAs at once, e.g. close=0.6,medium=0.4")
        g.add_argument("-n", "--num-images", type=int, default=1, help="images, seeds seed, seed+1, ... [1]")
    g.add_argument("--embedding", default=None, help="a textual-inversion embedding of the library (its token "
                   "stands where the shot words stand); with or without --shot")
    g.add_argument("--no-template", action="store_true", help="use the prompt as is (no 'a high-quality {shot} picture of ...')")
    g.add_argument("--negative", default="", help="negative prompt")
    g.add_argument("--sampler", default=DEFAULT_SAMPLER, choices=list(SAMPLERS), metavar="NAME",
                   help=f"one of: {', '.join(SAMPLERS)} [{DEFAULT_SAMPLER}]")
    g.add_argument("--steps", type=int, default=16, help="[16]")
    g.add_argument("--cfg", type=float, default=6.0, help="CFG scale [6]")
    g.add_argument("--width", type=int, default=512, help="multiple of 8 [512]")
    g.add_argument("--height", type=int, default=512, help="multiple of 8 [512]")
    g.add_argument("--seed", type=int, default=-1, help="-1 = random; the seed used is printed [-1]")


def _control_arguments(parser: argparse.ArgumentParser, *, sketches: bool = False) -> None:
    from dreamshot.generate.control import DEFAULT_CONTROLNETS

    g = parser.add_argument_group("ControlNet")
    if sketches:
        g.add_argument("--sketch-dir", type=Path, default=None, help="folder of the sketches named in a panel's "
                       "third column (scribble ControlNet) [the storyboard file's folder]")
    else:
        g.add_argument("--control", choices=["canny", "depth", "scribble"], default=None,
                       help="ControlNet kind: canny edges or a depth map of --control-image, or a scribble sketch")
        g.add_argument("--control-image", type=Path, default=None, help="reference frame (canny, depth) or sketch "
                       "(scribble: white strokes on black; black on white is inverted)")
        g.add_argument("--control-map", action="store_true", help="--control-image is a ready control map "
                       "(e.g. a saved *-control.png): used as is")
        g.add_argument("--canny-low", type=int, default=100, help="canny low threshold [100]")
        g.add_argument("--canny-high", type=int, default=200, help="canny high threshold [200]")
    g.add_argument("--controlnet", default=None, metavar="ID|DIR", help="ControlNet Hub id or diffusers folder "
                   f"[DREAMSHOT_CONTROLNET_<KIND>, else e.g. {DEFAULT_CONTROLNETS['canny']}; demo on the demo model]")
    g.add_argument("--control-scale", type=float, default=1.0, help="conditioning scale, 0-2 [1]")
    g.add_argument("--control-start", type=float, default=0.0, help="fraction of the steps where it starts [0]")
    g.add_argument("--control-end", type=float, default=1.0, help="fraction of the steps where it ends [1]")


def _control(args, kind: str | None = None):
    """The ControlRequest of the ControlNet flags (``kind`` for a storyboard's sketches); None without one."""
    from dreamshot.errors import InvalidInput
    from dreamshot.generate.request import ControlRequest

    kind = kind or getattr(args, "control", None)
    if not kind:
        if getattr(args, "control_image", None):
            raise InvalidInput("--control-image needs --control canny|depth|scribble.")
        return None
    image = getattr(args, "control_image", None)
    return ControlRequest(kind, str(image) if image else None, args.control_scale, args.control_start,
                          args.control_end, args.controlnet, low=getattr(args, "canny_low", 100),
                          high=getattr(args, "canny_high", 200), preprocessed=getattr(args, "control_map", False))


def _request(args, **overrides) -> GenerationRequest:
    fields = dict(
        prompt=getattr(args, "prompt", ""), shot=getattr(args, "shot", None), alpha=getattr(args, "alpha", 1.0),
        use_template=not args.no_template, negative_prompt=args.negative, sampler=args.sampler,
        steps=args.steps, cfg=args.cfg, width=args.width, height=args.height, seed=args.seed,
        num_images=getattr(args, "num_images", 1), blend=parse_blend(getattr(args, "blend", "")),
        control=_control(args),
        embedding=getattr(args, "embedding", None),
    )
    fields.update(overrides)
    return GenerationRequest(**fields)


def _progress(fraction: float, text: str) -> None:
    print(f"\r{fraction * 100:5.1f}%  {text:<40}", end="", file=sys.stderr, flush=True)


def register(sub, parents) -> None:
    p = sub.add_parser("generate", parents=parents, help="generate images",
                       description="Generate images; each PNG carries its settings (A1111 'parameters').")
    _request_arguments(p)
    p.add_argument("--out", type=Path, default=None, help="also copy the PNGs into this folder")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per denoising batch [automatic: from free GPU memory; 4 on a CPU]")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet first (worth it for long runs only)")
    _control_arguments(p)
    p.set_defaults(run=run_generate)

    p = sub.add_parser("sweep", parents=parents, help="shot types × α grid for one prompt and seed")
    p.add_argument("--prompt", "-p", required=True)
    p.add_argument("--shots", default="", help="comma-separated shot types or LoRA names [every shot with a LoRA]")
    p.add_argument("--alphas", default="0,0.25,0.5,0.75,1", help="[0,0.25,0.5,0.75,1]")
    _request_arguments(p, prompt=False)
    p.add_argument("--out", type=Path, required=True, help="grid PNG to write")
    p.set_defaults(run=run_sweep)

    p = sub.add_parser("storyboard", parents=parents, help="'shot | description' lines -> contact sheet PNG + PDF")
    p.add_argument("file", help="text file with one 'shot | description [| sketch.png]' per line, or - for stdin")
    p.add_argument("--columns", type=int, default=3)
    p.add_argument("--title", default="")
    _request_arguments(p, prompt=False)
    _control_arguments(p, sketches=True)
    p.add_argument("--out", type=Path, required=True, help="folder for storyboard.png and storyboard.pdf")
    p.set_defaults(run=run_storyboard)

    p = sub.add_parser("read-png", parents=parents, help="print the settings stored in PNGs",
                       description="Print the settings stored in PNGs. Needs no studio: --json reads the LoRA "
                                   "library of --data only when that studio exists (nothing is created).")
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="print the restored request as JSON")
    p.set_defaults(run_without_studio=run_read_png)

    p = sub.add_parser("loras", parents=parents, help="list the LoRA/embedding library or add an upload")
    p.add_argument("action", choices=["list", "add", "remove"], nargs="?", default="list")
    p.add_argument("file", nargs="?", type=Path, help="for add: a .safetensors LoRA (diffusers or kohya format) or "
                   "textual-inversion embedding (A1111 emb_params or diffusers learned_embeds), told apart by content")
    p.add_argument("--name", help="for add/remove: the LoRA's or embedding's name")
    p.add_argument("--shot", default=None, help="for add: the shot type it teaches (optional)")
    p.add_argument("--token", default=None, help="for add, embeddings: the prompt token [the file's, else <NAME>]")
    p.set_defaults(run=run_loras)


def run_generate(studio, args) -> int:
    from dreamshot.generate.service import service

    svc = service(studio)
    if args.compile:
        print(f"compiled mode: warm-up took {svc.compile(_request(args, seed=0)):.1f} s", file=sys.stderr)
    with svc.job("cli", progress=_progress) as job:
        result = svc.generate(_request(args), job, batch_size=args.batch_size)
    print(file=sys.stderr)
    cut = cut_off(svc.pipe.tokenizer, result.prompt)
    if cut:
        print(f"warning: the prompt is too long; the text encoder reads 75 tokens and never saw: {cut}",
              file=sys.stderr)
    rows = []
    for img in result.images:
        path = img.path
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            path = Path(shutil.copy2(img.path, args.out / img.path.name))
        row = {"path": str(path), "seed": img.seed}
        control = img.path.with_name(img.path.stem + "-control.png")
        if control.is_file():
            row["control"] = str(shutil.copy2(control, args.out / control.name) if args.out else control)
        rows.append(row)
        if not args.json:
            print(f"{path}  seed {img.seed}")
    if args.json:
        print(json.dumps({"prompt": result.prompt, "seconds": round(result.seconds, 3), "images": rows,
                          "loras": [[i.name, w] for i, w in result.loras],
                          "embedding": result.request.embedding}, indent=2))
    return 0


def run_sweep(studio, args) -> int:
    from dreamshot.generate import pngmeta
    from dreamshot.generate.service import service
    from dreamshot.generate.storyboard import alpha_sweep

    svc = service(studio)
    shots = [s.strip() for s in args.shots.split(",") if s.strip()]
    with svc.job("cli", progress=_progress) as job:
        result = alpha_sweep(svc, _request(args, prompt=args.prompt, num_images=1), shots, args.alphas, job)
    print(file=sys.stderr)
    pngmeta.save_png(result.grid, args.out, result.parameters)
    print(f"{args.out}  {len(result.shots)} shots × {len(result.alphas)} α, seed {result.cells[0][0].seed}")
    return 0


def run_storyboard(studio, args) -> int:
    from dreamshot.generate.service import service
    from dreamshot.generate.storyboard import folder_sketches, save_storyboard, storyboard

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
    sketch_dir = args.sketch_dir or (Path.cwd() if args.file == "-" else Path(args.file).resolve().parent)
    svc = service(studio)
    with svc.job("cli", progress=_progress) as job:
        result = storyboard(svc, text, _request(args, prompt="-", num_images=1), job, columns=args.columns,
                            title=args.title, sketches=folder_sketches(sketch_dir),
                            sketch_control=_control(args, "scribble"))
    print(file=sys.stderr)
    save_storyboard(result, args.out)
    print(f"{result.png_path}\n{result.pdf_path}\n{len(result.panels)} panels, seed {result.panels[0].seed}")
    return 0


def run_read_png(args) -> int:
    """Exit status 0: every file had settings; 1: some had none; 2: some could not be read."""
    from dreamshot.generate import pngmeta
    from dreamshot.safety import input_message

    status, restore = 0, None
    for path in args.files:
        try:
            text = pngmeta.read_parameters(path)
        except FileNotFoundError:
            print(f"error: {path}: no such file", file=sys.stderr)
            status = 2
            continue
        except (OSError, ValueError, SyntaxError):
            print(f"error: {path} is not an image that can be read (PNG, JPEG or WebP)", file=sys.stderr)
            status = 2
            continue
        except Exception as exc:   # an image bomb (Pillow's warning is an error here)
            if input_message(exc) is None:
                raise
            print(f"error: {path}: {input_message(exc)}", file=sys.stderr)
            status = 2
            continue
        if not text:
            print(f"{path}: no settings stored", file=sys.stderr)
            status = max(status, 1)
        elif args.json:
            restore = restore or _restorer(args)
            req, notes = restore(text, path.resolve().parent)
            print(json.dumps({"file": str(path), "request": asdict(req), "notes": notes}, indent=2, default=str))
        else:
            print(f"# {path}\n{text}\n")
    return status


def _restorer(args):
    """(text, folder of the PNG) -> (request, notes), matching LoRAs against the studio's library
    when the studio exists (an existing data folder or --db); never creates a data folder."""
    from dreamshot import settings as config
    from dreamshot.shots import get_taxonomy

    settings = config.from_args(args)
    if not settings.db_url and not (settings.data_dir / "studio.db").is_file():
        return lambda text, beside: _without_studio(text, beside, get_taxonomy(None))
    from dreamshot.generate.service import service
    from dreamshot.studio import Studio

    studio = Studio.open(settings)
    svc = service(studio)
    return svc.request_from_parameters


def _without_studio(text: str, beside: Path, taxonomy):
    from dreamshot.generate import control, pngmeta
    from dreamshot.generate.params import request_from_parameters

    req, notes = request_from_parameters(text, [], taxonomy)
    restored, more = control.restore(pngmeta.parse_parameters(text).settings, [beside])
    return req.replace(control=restored), notes + more


def run_loras(studio, args) -> int:
    from dreamshot.errors import InvalidInput
    from dreamshot.generate.service import service

    svc = service(studio)
    if args.action == "add":
        if not args.file or not args.name:
            raise InvalidInput("loras add needs a FILE and --name")
        info = svc.upload_lora(args.file, name=args.name, shot=args.shot, token=args.token)
        token = f", token {info.token}" if info.kind == "embedding" else ""
        print(f"added {info.kind} {info.name} ({info.format}, method {info.method}, shot {info.shot or '-'}{token}) "
              f"{info.short_hash}")
        return 0
    if args.action == "remove":
        if not args.name:
            raise InvalidInput("loras remove needs --name")
        svc.library.get(args.name)
        svc.library.remove(args.name)
        print(f"removed {args.name} from the library (the file stays on disk)")
        return 0
    for info in svc.library.list():
        print(f"{info.name:<24} {info.kind:<9} {info.method:<6} shot {info.shot or '-':<10} "
              f"token {info.token or '-':<14} {info.format:<9} {info.origin:<9} {info.short_hash}  {info.path}")
    return 0
