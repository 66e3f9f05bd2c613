"""The blind A/B survey (paper section 4.4, Table 5): surveys, participants and their answers.

- Admins build a survey (``build.py``), open and close it, exclude participants (recorded, votes
  kept) and read the results (``results.py``).
- A participant joins an open survey and gets a random token, a random subset of the pool in a
  random order, a random A/B side per pair and one pair repeated with its sides swapped (the
  consistency check). All of it is stored in their ``plan``.
- Each answer is one row, committed before it is acknowledged; the database refuses a second row
  for the same participant, pair, question and round. Answers follow the plan: the three
  questions of a pair before the next pair; a resent identical answer is acknowledged once.
- Which side was the fine-tuned model is returned only with the answer that completes a pair.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import re
import secrets
import threading

import sqlalchemy as sa

from dreamshot import schema
from dreamshot.errors import AccessDenied, InvalidInput, NotFound
from dreamshot.inputs import text_value, whole_number
from dreamshot.storage import now
from dreamshot.survey import build as building
from dreamshot.survey.limits import (DEFAULT_MAX_ANSWERS_PER_MIN, DEFAULT_MAX_NEW_PER_HOUR, MAX_ANSWERS_ENV,
                                     MAX_NEW_ENV, RateLimiter, env_int)

from dreamshot.survey.model import SurveyInfo, choice_of, clean_survey_name, make_plan

log = logging.getLogger(__name__)
S, P, PT, A = schema.surveys, schema.survey_pairs, schema.survey_participants, schema.survey_answers
QUESTIONS = {"like": "Which picture do you like most?",
             "shot": "Which is closer to the shot type?",
             "prompt": "Which is closer to the prompt?"}
ANSWERS = {"a": "A", "b": "B", "n": "N", "neither": "N", "same": "N"}
STATES = ("draft", "open", "closed")
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]{16,64}$")
IP_SALT_KEY = "survey_ip_salt"


def new_token() -> str:
    """A participant token (24 URL-safe characters) that never starts with '-', so that it and its
    prefixes can be typed on a command line (``survey exclude NAME TOKEN``)."""
    while True:
        token = secrets.token_urlsafe(18)
        if not token.startswith("-"):
            return token


class SurveyService:
    def __init__(self, studio):
        self.studio = studio
        self.rng = random.SystemRandom()
        self.max_new_per_hour = env_int(MAX_NEW_ENV, DEFAULT_MAX_NEW_PER_HOUR)   # counted in the database
        self.answer_limiter = RateLimiter(env_int(MAX_ANSWERS_ENV, DEFAULT_MAX_ANSWERS_PER_MIN), 60.0)
        self._mirror = None
        self._salt: str | None = None
        # SQLite takes one writer at a time and makes the others sleep-and-retry (up to 100 ms per
        # try): a crowd's answers queue here instead, first come first served, commit by commit.
        self._write_lock = threading.Lock() if studio.db.is_sqlite else contextlib.nullcontext()

    # ---- surveys (admins) ------------------------------------------------------------------------
    def _survey_row(self, conn, name: str):
        row = conn.execute(sa.select(S).where(S.c.name == clean_survey_name(name))).first()
        if row is None:
            raise NotFound(f"No survey called {name.strip()!r}.")
        return row

    def info(self, name: str) -> SurveyInfo:
        with self.studio.db.read() as conn:
            return self._info(conn, self._survey_row(conn, name))

    def _info(self, conn, row) -> SurveyInfo:
        pool = conn.execute(sa.select(P.c.status, sa.func.count()).where(P.c.survey_id == row.id)
                            .group_by(P.c.status)).all()
        people = dict(conn.execute(sa.select(PT.c.preview, sa.func.count()).where(PT.c.survey_id == row.id)
                                   .group_by(PT.c.preview)).all())
        answers = conn.execute(sa.select(sa.func.count()).select_from(A).join(PT, PT.c.id == A.c.participant_id)
                               .where(PT.c.survey_id == row.id, PT.c.preview.is_(False))).scalar_one()
        counts = dict(pool)
        return SurveyInfo(row.id, row.name, row.state, row.per_participant, row.intro, row.settings,
                          sum(counts.values()), counts.get("ready", 0), people.get(False, 0), answers,
                          previews=people.get(True, 0))

    def list(self) -> list[SurveyInfo]:
        with self.studio.db.read() as conn:
            return [self._info(conn, r) for r in conn.execute(sa.select(S).order_by(S.c.id))]

    def open_names(self) -> list[str]:
        with self.studio.db.read() as conn:
            return conn.execute(sa.select(S.c.name).where(S.c.state == "open").order_by(S.c.id)).scalars().all()

    def create(self, spec: building.SurveySpec, by: str | None = None) -> SurveyInfo:
        """A draft survey with its pool planned (pending pairs); nothing generated yet."""
        name = clean_survey_name(spec.name)
        taxonomy = self.studio.project.taxonomy()
        shots = list(dict.fromkeys(s.strip() for s in spec.shots if s.strip()))
        if not shots:
            raise InvalidInput("Choose at least one shot type.")
        for shot in shots:
            taxonomy.get(shot)
        if not 1 <= int(spec.pairs) <= building.MAX_POOL:
            raise InvalidInput(f"The pool holds 1 to {building.MAX_POOL} pairs (got {spec.pairs}).")
        if not 1 <= int(spec.per_participant) <= int(spec.pairs):
            raise InvalidInput(f"Pairs per participant must be between 1 and the pool size {spec.pairs}.")
        if not 0.0 < float(spec.alpha) <= 1.5:
            raise InvalidInput("α must be above 0 and at most 1.5.")
        building.check_generation(spec)
        sides = building.resolve_generators(self.studio, spec, shots)     # nothing to generate with: a clear error now
        rng = random.Random(spec.seed) if spec.seed is not None else random.Random(self.rng.random())
        plan = (building.plan_from_prompts(spec.prompts, shots, int(spec.pairs)) if spec.prompts is not None
                else building.plan_from_frames(self.studio, shots, int(spec.pairs), spec.frames, rng))
        spec.shots = shots
        with self.studio.db.write() as conn:
            if conn.execute(sa.select(S.c.id).where(S.c.name == name)).first():
                raise InvalidInput(f"A survey called {name!r} exists already; choose another name "
                                   "(or build it again to finish generating its pairs).")
            survey_id = conn.execute(S.insert().values(
                name=name, state="draft", per_participant=int(spec.per_participant),
                intro=(spec.intro or building.DEFAULT_INTRO).strip(),
                settings={**spec.settings(), "generators": building.generators_settings(spec, sides)},
                created_by=by, created_at=now())).inserted_primary_key[0]
            building.insert_pairs(conn, survey_id, plan, spec, sides, self.studio.project, rng)
        return self.info(name)

    def generate(self, name: str, progress=None, job=None) -> SurveyInfo:
        """Generate the pending pairs of a survey (resumes an interrupted build)."""
        info = self.info(name)
        if info.state != "draft" and info.ready < info.pool:
            raise InvalidInput("Only a draft survey's pairs can be generated.")
        building.generate_pending(self.studio, info.id, progress, job)
        return self.info(name)

    def build(self, spec: building.SurveySpec, by: str | None = None, progress=None, job=None) -> SurveyInfo:
        """Create the survey if it is new, then generate every pair still pending. An unfinished
        survey is finished with the settings it was created with (named in the result's ``kept``); a
        finished one asked for with other settings is refused (it would otherwise look built with them)."""
        changed: list[str] = []
        try:
            info = self.info(spec.name)
        except NotFound:
            self.create(spec, by)
        else:
            changed = building.differences(spec, info)
            if changed and info.ready == info.pool:
                raise InvalidInput(f"A survey called {info.name!r} exists already, built with other settings: "
                                   + "; ".join(changed) + ". Choose another name for a new survey.")
        return dataclasses.replace(self.generate(spec.name, progress, job), kept=tuple(changed))

    def set_state(self, name: str, state: str) -> SurveyInfo:
        if state not in STATES[1:]:
            raise InvalidInput("A survey can be opened or closed.")
        info = self.info(name)
        if state == "open" and info.ready < info.pool:
            raise InvalidInput(f"{info.pool - info.ready} pair(s) are not generated yet: build the survey again "
                               "to finish them, then open it.")
        stamp = {"open": {"opened_at": now(), "closed_at": None}, "closed": {"closed_at": now()}}[state]
        with self.studio.db.write() as conn:
            conn.execute(S.update().where(S.c.id == info.id).values(state=state, **stamp))
        return self.info(name)

    def set_excluded(self, name: str, token: str, exclude: bool, reason: str = "", by: str | None = None) -> None:
        """Leave a participant out of the results (or take them back); their votes stay."""
        info = self.info(name)
        values = ({"excluded_at": now(), "excluded_by": by, "exclusion_reason": (reason or "").strip()[:500] or "excluded"}
                  if exclude else {"excluded_at": None, "excluded_by": by, "exclusion_reason": None})
        prefix = text_value(token, "The token")
        if len(prefix) < 6:
            raise InvalidInput("Give at least the first 6 characters of the participant's token.")
        with self.studio.db.write() as conn:
            ids = conn.execute(sa.select(PT.c.id).where(PT.c.survey_id == info.id)
                               .where(PT.c.token.startswith(prefix, autoescape=True))).scalars().all()
            if len(ids) != 1:
                raise NotFound(f"No single participant of {info.name!r} has a token starting with {prefix!r}.")
            conn.execute(PT.update().where(PT.c.id == ids[0]).values(**values))

    # ---- participants ---------------------------------------------------------------------------
    def ip_key(self, ip: str) -> str:
        """A salted hash of the client address: caps work, addresses are not stored."""
        if self._salt is None:
            salt = self.studio.db.get_setting(IP_SALT_KEY)
            if not salt:
                self.studio.db.set_setting(IP_SALT_KEY, secrets.token_hex(16))
                salt = self.studio.db.get_setting(IP_SALT_KEY)
            self._salt = salt
        return hashlib.sha256(f"{self._salt}:{ip}".encode()).hexdigest()

    def join(self, survey: str, token: str | None, ip: str, preview: bool = False) -> str:
        """The participant's token: the one given if it belongs to this survey, else a new one.
        ``preview``: a studio member trying the survey; their answers are stored like anyone's but
        left out of the results (``results.py``)."""
        names = self.open_names()
        survey = text_value(survey, "The survey") or (names[0] if len(names) == 1 else "")
        if not survey:
            raise NotFound("No survey is open right now." if not names else "Choose a survey.")
        token = text_value(token, "The token")
        with self.studio.db.read() as conn:
            row = self._survey_row(conn, survey)
            if token and _TOKEN.match(token):
                if conn.execute(sa.select(PT.c.id).where(PT.c.token == token, PT.c.survey_id == row.id)).first():
                    return token
            if row.state != "open":
                raise AccessDenied(f"The survey {row.name!r} is {row.state}: it does not take new participants.")
            pairs = conn.execute(sa.select(P.c.id, P.c.shot).where(P.c.survey_id == row.id, P.c.status == "ready")
                                 .order_by(P.c.position)).all()
        key = self.ip_key(ip)
        token = new_token()
        plan = make_plan([(p.id, p.shot) for p in pairs], row.per_participant, self.rng)
        with self._writing() as conn:
            if not preview:
                self._check_new_cap(conn, key)
            conn.execute(PT.insert().values(survey_id=row.id, token=token, ip_hash=key, plan=plan, created_at=now(),
                                            preview=bool(preview)))
        return token

    def _check_new_cap(self, conn, key: str) -> None:
        """New participants from one address in the last hour, counted in the database (the ``ip_hash``
        column): a restart or a second server on the same database does not reset the count. Checked
        in the transaction that adds the participant (SQLite writes one at a time; PostgreSQL takes a
        lock per address for the transaction)."""
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": int(key[:15], 16)})
        recent = conn.execute(sa.select(sa.func.count()).select_from(PT).where(
            PT.c.ip_hash == key, PT.c.created_at > now() - 3600.0, PT.c.preview.is_(False))).scalar_one()
        if recent >= self.max_new_per_hour:
            raise AccessDenied("Too many new participants from your network in the last hour; please try later.")

    def _participant(self, conn, token: str):
        token = text_value(token, "The token")
        row = conn.execute(sa.select(PT, S.c.state, S.c.name.label("survey_name"), S.c.intro, S.c.settings)
                           .join(S, S.c.id == PT.c.survey_id).where(PT.c.token == token)).first() if _TOKEN.match(token) else None
        if row is None:
            raise NotFound("Unknown participant token: join the survey first.")
        return row

    @staticmethod
    def _progress(plan: list, answered: dict) -> tuple[int, int | None]:
        """(slots done, first slot with a missing answer or None when finished)."""
        for slot, item in enumerate(plan):
            if len(answered.get((item["pair"], item["round"]), {})) < len(QUESTIONS):
                return slot, slot
        return len(plan), None

    @staticmethod
    def _answered(conn, participant_id: int) -> dict:
        out: dict = {}
        for r in conn.execute(sa.select(A.c.pair_id, A.c.round, A.c.question, A.c.answer, A.c.created_at)
                              .where(A.c.participant_id == participant_id)):
            out.setdefault((r.pair_id, r.round), {})[r.question] = (r.answer, r.created_at)
        return out

    def view(self, token: str) -> dict:
        """The participant's position: intro, progress and the current pair (no model names)."""
        with self.studio.db.read() as conn:
            who = self._participant(conn, token)
            answered = self._answered(conn, who.id)
            done, slot = self._progress(who.plan, answered)
            out = {"token": who.token, "survey": who.survey_name, "state": who.state, "intro": who.intro,
                   "total": len(who.plan), "done": done, "finished": slot is None, "slot": slot,
                   "questions": QUESTIONS, "preview": bool(who.preview)}
            if slot is None:
                return out
            item = who.plan[slot]
            pair = conn.execute(sa.select(P).where(P.c.id == item["pair"])).one()
        phrase = self.studio.project.shot_phrase(pair.shot)
        out.update(pair_id=pair.id, shot=pair.shot, shot_phrase=phrase, prompt=pair.caption,
                   answered={q: a for q, (a, _) in answered.get((pair.id, item["round"]), {}).items()})
        if who.shown_slot != slot and who.state == "open":
            with self._writing() as conn:
                conn.execute(PT.update().where(PT.c.id == who.id).values(shown_slot=slot, shown_at=now()))
        return out

    def images(self, token: str, slot: int):
        """(picture A, picture B) of one of the participant's slots, as RGB pixels: no file name or
        PNG text that could tell which model made which."""
        from dreamshot.survey import images

        with self.studio.db.read() as conn:
            who = self._participant(conn, token)
            number = whole_number(slot, "slot")
            if not 0 <= number < len(who.plan):    # a negative slot would count from the end
                raise InvalidInput(f"Slot {slot} is not one of this participant's pairs.")
            item = who.plan[number]
            pair = conn.execute(sa.select(P.c.base_image, P.c.lora_image).where(P.c.id == item["pair"])).one()
        first, second = (pair.lora_image, pair.base_image) if item["lora_side"] == "A" else (pair.base_image, pair.lora_image)
        return images.load(self.studio, first), images.load(self.studio, second)

    def answer(self, token: str, slot: int, pair_id: int, question: str, answer: str, ip: str) -> dict:
        """Store one answer (committed before this returns). Returns {stored, duplicate, slot_done,
        lora_side (only when this pair is now complete), done, total, finished}."""
        question = text_value(question, "The question").lower()
        if question not in QUESTIONS:
            raise InvalidInput(f"Unknown question {question!r}; one of: {', '.join(QUESTIONS)}.")
        value = ANSWERS.get(text_value(answer, "The answer").lower())
        if value is None:
            raise InvalidInput("An answer is A, B or N (neither / the same).")
        if not self.answer_limiter.allow(self.ip_key(ip)):
            raise AccessDenied("Too many answers from your network in the last minute; slow down a little.")
        slot, pair_id = whole_number(slot, "slot"), whole_number(pair_id, "pair_id")
        try:
            result = self._store(token, slot, pair_id, question, value)
        except sa.exc.IntegrityError:  # a concurrent identical request won the race (PostgreSQL)
            result = self._store(token, slot, pair_id, question, value)
        if result["stored"] and not result["duplicate"]:
            self.mirror().record(result.pop("_row"))
        result.pop("_row", None)
        return result

    def _store(self, token, slot, pair_id, question, value) -> dict:
        with self._writing() as conn:
            who = self._participant(conn, token)
            if who.state != "open":
                raise AccessDenied(f"The survey {who.survey_name!r} is {who.state}: answers are no longer accepted.")
            if not 0 <= slot < len(who.plan) or who.plan[slot]["pair"] != pair_id:
                raise InvalidInput(f"Pair {pair_id} is not assigned to this participant at slot {slot}.")
            item = who.plan[slot]
            answered = self._answered(conn, who.id)
            mine = answered.get((pair_id, item["round"]), {})
            if question in mine:
                if mine[question][0] != value:
                    raise InvalidInput("This question was already answered; answers are final.")
                return self._ack(who, answered, slot, duplicate=True)
            _, current = self._progress(who.plan, answered)
            if current != slot:
                raise InvalidInput(f"Answer pair {current + 1} first." if current is not None
                                   else "All pairs are answered already.")
            t = now()
            starts = [c for _, c in mine.values()] + ([who.shown_at] if who.shown_slot == slot and who.shown_at else [])
            last = max(starts) if starts else None
            row = dict(participant_id=who.id, pair_id=pair_id, round=item["round"], slot=slot, question=question,
                       answer=value, lora_side=item["lora_side"], choice=choice_of(value, item["lora_side"]),
                       seconds=round(t - last, 3) if last else None, created_at=t)
            conn.execute(A.insert().values(**row))
            mine[question] = (value, t)
            answered[(pair_id, item["round"])] = mine
            ack = self._ack(who, answered, slot, duplicate=False)
            if ack["finished"] and who.finished_at is None:
                conn.execute(PT.update().where(PT.c.id == who.id).values(finished_at=t))
            ack["_row"] = dict(row, survey=who.survey_name, token=who.token, preview=bool(who.preview))
            return ack

    def _ack(self, who, answered, slot, *, duplicate: bool) -> dict:
        item = who.plan[slot]
        done, _ = self._progress(who.plan, answered)
        slot_done = len(answered.get((item["pair"], item["round"]), {})) == len(QUESTIONS)
        return {"stored": True, "duplicate": duplicate, "slot": slot, "slot_done": slot_done,
                "lora_side": item["lora_side"] if slot_done else None, "done": done,
                "total": len(who.plan), "finished": done == len(who.plan),
                "sides": building.side_labels(who.settings) if slot_done else None}

    @contextlib.contextmanager
    def _writing(self):
        with self._write_lock, self.studio.db.write() as conn:
            yield conn

    # ---- mirroring ------------------------------------------------------------------------------
    def mirror(self):
        if self._mirror is None:
            from dreamshot.survey.mirror import VoteMirror

            self._mirror = VoteMirror.from_env(self.studio)
        return self._mirror

    def close(self) -> None:
        if self._mirror is not None:
            self._mirror.close()


def service(studio) -> SurveyService:
    return studio.service(SurveyService)
