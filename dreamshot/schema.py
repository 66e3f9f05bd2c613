"""The current database schema, as SQLAlchemy Core tables used by every query.

This file describes the schema *now*; ``migrations.py`` holds the frozen steps that build it. A test
(`tests/test_storage.py`) compares a freshly migrated database with these tables, so a change here
without a migration (or the reverse) fails the suite.

Conventions: times are UNIX seconds (float, UTC); paths are relative to the data folder;
free-form extras go in JSON columns.
"""

import sqlalchemy as sa

metadata = sa.MetaData()

schema_meta = sa.Table(
    "schema_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# Project-wide settings edited from the UI: taxonomy preset, quotas, prompt template, ...
project_settings = sa.Table(
    "project_settings", metadata,
    sa.Column("key", sa.String(128), primary_key=True),
    sa.Column("value", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# One import of a pool (folder, zip, dataset, video); resumable through `cursor`.
import_runs = sa.Table(
    "import_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("options", sa.JSON, nullable=False),
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Column("cursor", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
)

# Every image seen by an import, kept or filtered out (status/filter_reason say which and why).
frames = sa.Table(
    "frames", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("import_run_id", sa.Integer, sa.ForeignKey("import_runs.id", ondelete="SET NULL"), nullable=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("path", sa.Text, nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=True),
    sa.Column("phash", sa.String(32), nullable=True),
    sa.Column("width", sa.Integer, nullable=True),
    sa.Column("height", sa.Integer, nullable=True),
    sa.Column("mode", sa.String(16), nullable=True),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("filter_reason", sa.Text, nullable=True),
    sa.Column("crop_box", sa.JSON, nullable=True),
    sa.Column("crop_source", sa.String(16), nullable=True),
    sa.Column("split", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("content_hash", name="uq_frames_content_hash"),
)
sa.Index("ix_frames_status_split", frames.c.status, frames.c.split)
sa.Index("ix_frames_phash", frames.c.phash)

# Every annotator action (label, reject, skip); undo marks a row, it never deletes it.
labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), nullable=False),
    sa.Column("annotator", sa.String(128), nullable=False),
    sa.Column("taxonomy", sa.String(64), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("shot", sa.String(64), nullable=True),
    sa.Column("is_extra", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("undone_at", sa.Float, nullable=True),
    # How the label was given: "typed" (a class key), "suggested" (the model's suggestion accepted),
    # "imported" (a labels file); NULL for rows written before this was recorded (typed or imported).
    sa.Column("source", sa.String(16), nullable=True),
    # The order the frame was shown under (random, uncertain, quota, class:<name>, held-out ...).
    sa.Column("queue_order", sa.String(80), nullable=True),
    # The shot-type model's prediction for the frame when it was shown, made before the model saw
    # this label (shown to the annotator or held back for a blind check): class, probability, and
    # how many labels the model had been fit on. NULL when no model existed yet.
    sa.Column("predicted", sa.String(64), nullable=True),
    sa.Column("confidence", sa.Float, nullable=True),
    sa.Column("model_labels", sa.Integer, nullable=True),
    sa.Column("suggestion_shown", sa.Boolean, nullable=True),
)
sa.Index("ix_labels_annotator_frame", labels.c.annotator, labels.c.frame_id)
sa.Index("ix_labels_frame", labels.c.frame_id)

# CLIP image features of frames (the Label tab's shot-type model), one row per frame and model
# (``model``: a short hash naming the exact CLIP); ``vector``: float32 bytes of length ``dim``.
frame_features = sa.Table(
    "frame_features", metadata,
    sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("model", sa.String(64), primary_key=True),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Pre-labels: the shot-type model's class for unlabeled frames (``python -m labeling suggest`` or
# the tab's button); never a final label - annotators review them by class and confirm.
frame_suggestions = sa.Table(
    "frame_suggestions", metadata,
    sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("taxonomy", sa.String(64), primary_key=True),
    sa.Column("shot", sa.String(64), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("margin", sa.Float, nullable=False),
    sa.Column("model_labels", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
sa.Index("ix_frame_suggestions_shot", frame_suggestions.c.taxonomy, frame_suggestions.c.shot)

# Machine caption and its human edit, side by side. `version` guards edits against races.
captions = sa.Table(
    "captions", metadata,
    sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("caption_original", sa.Text, nullable=True),
    sa.Column("caption", sa.Text, nullable=True),
    sa.Column("model", sa.String(256), nullable=True),
    sa.Column("captioner_prompt", sa.Text, nullable=True),
    sa.Column("edited_by", sa.String(128), nullable=True),
    sa.Column("edited_at", sa.Float, nullable=True),
    sa.Column("reviewed", sa.Boolean, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    # How the caption last got a change a person made: "hand" (typed), "bulk" (find/replace, strip);
    # NULL while it is the machine caption. The edit rate counts hand edits.
    sa.Column("edit_kind", sa.String(8), nullable=True),
)

# One LoRA training run (one shot type). The job runner owns status/pid; the trainer writes files.
training_runs = sa.Table(
    "training_runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("shot", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("preset", sa.String(32), nullable=True),
    sa.Column("config", sa.JSON, nullable=False),
    sa.Column("output_dir", sa.Text, nullable=False),
    sa.Column("pid", sa.Integer, nullable=True),
    sa.Column("step", sa.Integer, nullable=False),
    sa.Column("total_steps", sa.Integer, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("result", sa.JSON, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float, nullable=True),
    sa.Column("finished_at", sa.Float, nullable=True),
)

# LoRAs and textual-inversion embeddings the generator can use: trained by the studio or uploaded.
# kind: "lora" or "embedding"; method: how it was made ("lora", "ti", "full" = extracted from a full
# fine-tune, "motion" = trained on clips); token: an embedding's placeholder in prompts (e.g. "<close-shot>").
loras = sa.Table(
    "loras", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("shot", sa.String(64), nullable=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("training_runs.id", ondelete="SET NULL"), nullable=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("base_model", sa.Text, nullable=True),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, server_default="lora"),
    sa.Column("method", sa.String(16), nullable=False, server_default="lora"),
    sa.Column("token", sa.String(128), nullable=True),
)

# Blind A/B surveys (paper Table 5). A survey owns a pool of pairs; each participant gets a random
# subset in a random order with random sides (``plan``), and one answer row per question.
surveys = sa.Table(
    "surveys", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("state", sa.String(16), nullable=False),          # draft | open | closed
    sa.Column("per_participant", sa.Integer, nullable=False),
    sa.Column("intro", sa.Text, nullable=False),
    sa.Column("settings", sa.JSON, nullable=False),              # shots, alpha, generation settings
    sa.Column("created_by", sa.String(128), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("opened_at", sa.Float, nullable=True),
    sa.Column("closed_at", sa.Float, nullable=True),
)

# Base and fine-tuned images from the same prompt and seed (status pending until both exist).
survey_pairs = sa.Table(
    "survey_pairs", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("survey_id", sa.Integer, sa.ForeignKey("surveys.id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("shot", sa.String(64), nullable=False),
    sa.Column("caption", sa.Text, nullable=False),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="SET NULL"), nullable=True),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("alpha", sa.Float, nullable=False),
    sa.Column("lora_name", sa.String(128), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),         # pending | ready
    sa.Column("base_image", sa.Text, nullable=True),
    sa.Column("lora_image", sa.Text, nullable=True),
    sa.Column("base_parameters", sa.Text, nullable=True),
    sa.Column("lora_parameters", sa.Text, nullable=True),
    sa.Column("meta", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("survey_id", "position", name="uq_survey_pairs_position"),
)

survey_participants = sa.Table(
    "survey_participants", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("survey_id", sa.Integer, sa.ForeignKey("surveys.id"), nullable=False),
    sa.Column("token", sa.String(64), nullable=False, unique=True),
    sa.Column("ip_hash", sa.String(64), nullable=False),
    sa.Column("plan", sa.JSON, nullable=False),                 # [{slot, pair, lora_side, round}]
    sa.Column("shown_slot", sa.Integer, nullable=True),
    sa.Column("shown_at", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float, nullable=True),
    sa.Column("excluded_at", sa.Float, nullable=True),
    sa.Column("excluded_by", sa.String(128), nullable=True),
    sa.Column("exclusion_reason", sa.Text, nullable=True),
    # A studio member trying the survey on the full studio: answers kept, left out of the results.
    sa.Column("preview", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
)
sa.Index("ix_survey_participants_ip", survey_participants.c.ip_hash, survey_participants.c.created_at)

# One row per answer; the database refuses a second answer to the same question of the same pair.
survey_answers = sa.Table(
    "survey_answers", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("participant_id", sa.Integer, sa.ForeignKey("survey_participants.id"), nullable=False),
    sa.Column("pair_id", sa.Integer, sa.ForeignKey("survey_pairs.id"), nullable=False),
    sa.Column("round", sa.Integer, nullable=False),             # 1 for the repeated pair's 2nd showing
    sa.Column("slot", sa.Integer, nullable=False),
    sa.Column("question", sa.String(16), nullable=False),       # like | shot | prompt
    sa.Column("answer", sa.String(1), nullable=False),          # A | B | N
    sa.Column("lora_side", sa.String(1), nullable=False),       # A | B
    sa.Column("choice", sa.String(8), nullable=False),          # lora | base | neither
    sa.Column("seconds", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("participant_id", "pair_id", "question", "round", name="uq_survey_answers_once"),
)
sa.Index("ix_survey_answers_pair", survey_answers.c.pair_id)
