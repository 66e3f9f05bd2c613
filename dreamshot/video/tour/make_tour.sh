#!/usr/bin/env bash
# The video tour of docs/video.md, end to end on the offline demo model (random weights: the GIFs show the
# pipeline working, not what a trained SD 1.5 makes). Run from the repository root:
#     bash dreamshot/video/tour/make_tour.sh            # about 3 minutes on 2 CPU cores
# Writes dreamshot/video/tour/{shot-clip,camera-zoom-in,transition-long-close,restyle}.gif (128 px).
set -euo pipefail
export DREAMSHOT_DATA="${DREAMSHOT_DATA:-$(mktemp -d)}" DREAMSHOT_MODEL=demo
TOUR=dreamshot/video/tour WORK="$DREAMSHOT_DATA/tour"
mkdir -p "$WORK"
VIDEOS=$(python -c "import gradio, os; print(os.path.dirname(gradio.__file__))")/media_assets/videos
G="--width 128 --height 128 --steps 12 --frames 16 --fps 8 --seed 7"

# 1. Label: import two videos (each detected shot keeps its middle frame and a short clip), with labels
printf 'file,shot\na.mp4,long\nb.mp4,close\n' > "$WORK/labels.csv"
python -m labeling import "$VIDEOS/a.mp4" --min-side 64 --labels "$WORK/labels.csv"
python -m labeling import "$VIDEOS/b.mp4" --min-side 64 --labels "$WORK/labels.csv"
python -m labeling export-clips "$WORK/clips"

# 2. Train: one shot LoRA per shot type on the labeled clips, through AnimateDiff (motion modules frozen)
python -m training --shots long close --preset smoke --method motion --resolution 64 --clip-frames 8 \
                   --max-steps 20 --learning-rate 1e-3 --validation-steps 0 --checkpoint-steps 0

# 3. Video: a shot clip, a camera-move clip, a long -> close transition, a restyled video
python -m dreamshot video clip --prompt "a lighthouse at dusk" --shot long $G --out "$WORK/shot"
python -m dreamshot video clip --prompt "a lighthouse at dusk" --camera zoom-in --camera-strength 1.0 $G --out "$WORK/zoom"
python -m dreamshot video transition --prompt "a woman on a bridge" --from long --to close $G --out "$WORK/transition"
python -m dreamshot video restyle "$VIDEOS/b.mp4" --shot close --control canny --seed-policy fixed --max-frames 16 \
       --width 128 --height 128 --steps 8 --seed 7 --out "$WORK/restyle"

# The GIFs for docs/video.md: the CLI's clip.gif (and the restyled MP4) with one shared 32-colour palette,
# so each stays under 200 KB (random-weight frames are noise and compress badly).
python - "$WORK" "$TOUR" <<'PY'
import sys
from pathlib import Path

import av
from PIL import Image

work, tour = Path(sys.argv[1]), Path(sys.argv[2])


def frames_of(path):
    if path.suffix == ".gif":
        im = Image.open(path)
        out = []
        for i in range(im.n_frames):
            im.seek(i)
            out.append(im.convert("RGB"))
        return out, im.info.get("duration", 125)
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return [f.to_image() for f in c.decode(stream)], max(20, round(1000 / float(stream.average_rate)))


for source, name in [("shot/clip.gif", "shot-clip"), ("zoom/clip.gif", "camera-zoom-in"),
                     ("transition/clip.gif", "transition-long-close"), ("restyle/restyled.mp4", "restyle")]:
    frames, duration = frames_of(work / source)
    palette = frames[len(frames) // 2].quantize(colors=32, method=Image.Quantize.MEDIANCUT)
    small = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    small[0].save(tour / f"{name}.gif", save_all=True, append_images=small[1:], duration=duration, loop=0,
                  optimize=True)
PY
ls -l "$TOUR"/*.gif
