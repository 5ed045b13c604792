"""The store's LLM records: every call to the endpoint (with its prompt and answer, compressed)
and the versions of the run's meta-insights. A part of `evolve.store.Store` (its base class).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from .records import Insight, LLMCall, _insight, _llm_call


class LLMRecords:
    """LLM calls and meta-insights: methods of `Store`, which gives them `transaction` and `_query`."""

    transaction: Any
    _query: Any

    def add_llm_call(
        self,
        *,
        model: str,
        ok: bool,
        operator: str = "",
        purpose: str = "",
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost: float = 0.0,
        latency: float = 0.0,
        error: str = "",
        outcome: str = "",
        why: str = "",
        run: str | None = None,
        individual: str | None = None,
        prompt: Sequence[Mapping[str, str]] | None = None,
        answer: str | None = None,
    ) -> int:
        """Record one LLM call; returns its row id (for `settle_llm_call` and `assign_llm_calls`).

        With `prompt` (the messages sent) and `answer`, both are kept zlib-compressed beside it."""
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO llm_calls (time, run, model, operator, purpose, prompt_tokens,"
                " completion_tokens, cost, latency, ok, error, outcome, why, individual)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), run, model, operator, purpose, prompt_tokens, completion_tokens, cost,
                 latency, int(ok), error, outcome, why, individual),
            )  # fmt: skip
            call = int(cur.lastrowid or 0)
            if prompt is not None or answer is not None:
                conn.execute(
                    "INSERT INTO llm_texts (call, prompt, answer) VALUES (?, ?, ?)",
                    (call, _pack(json.dumps([dict(m) for m in prompt or ()])), _pack(answer or "")),
                )
            return call

    def settle_llm_call(self, call: int, outcome: str, why: str = "") -> None:
        """Record what became of a call's answer: usable, repaired or unusable (with why)."""
        if outcome not in ("usable", "repaired", "unusable"):
            raise ValueError(f"unknown outcome {outcome!r}")
        with self.transaction() as conn:
            conn.execute(
                "UPDATE llm_calls SET outcome = ?, why = ? WHERE id = ?", (outcome, why[:1000], call)
            )

    def assign_llm_calls(self, call_ids: Sequence[int], individual: str) -> None:
        """Name the individual that the calls `call_ids` (made while proposing it) were for."""
        if not call_ids:
            return
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE llm_calls SET individual = ? WHERE id = ?", [(individual, i) for i in call_ids]
            )

    def llm_calls(
        self, run: str | None = None, *, individual: str | None = None, purpose: str | None = None
    ) -> list[LLMCall]:
        """LLM calls in the order they were made, filtered by run, individual and purpose."""
        where, params = [], []
        for column, value in (("run", run), ("individual", individual), ("purpose", purpose)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return [_llm_call(r) for r in self._query(f"SELECT * FROM llm_calls {clause} ORDER BY id", params)]

    def llm_text(self, call: int) -> tuple[list[dict[str, str]], str] | None:
        """The messages a call sent and the answer it got, or None when they were not kept."""
        rows = self._query("SELECT prompt, answer FROM llm_texts WHERE call = ?", (call,))
        if not rows:
            return None
        return json.loads(_unpack(rows[0]["prompt"])), _unpack(rows[0]["answer"])

    def llm_spend(self, run: str | None = None) -> dict[str, float]:
        """Totals over LLM calls: calls, failures (the endpoint gave no answer), unusable answers,
        tokens, cost and mean latency."""
        sql = (
            "SELECT COUNT(*) AS calls, COALESCE(SUM(1 - ok), 0) AS failures,"
            " COALESCE(SUM(ok = 1 AND outcome = 'unusable'), 0) AS unusable,"
            " COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,"
            " COALESCE(SUM(completion_tokens), 0) AS completion_tokens, COALESCE(SUM(cost), 0) AS cost,"
            " COALESCE(AVG(latency), 0) AS mean_latency FROM llm_calls"
        )
        row = self._query(sql + (" WHERE run = ?" if run else ""), (run,) if run else ())[0]
        return {k: row[k] for k in row.keys()}

    def add_insight(
        self,
        text: str,
        run: str | None = None,
        *,
        items: Sequence[Mapping[str, Any]] = (),
        dropped: Sequence[Mapping[str, Any]] = (),
        children: int = 0,
        call: int | None = None,
    ) -> int:
        """Store the next version of a run's meta-insights (it replaces the previous); returns it."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(version), 0) FROM meta_insights WHERE run IS ?", (run,)
            ).fetchone()
            version = int(row[0]) + 1
            conn.execute(
                "INSERT INTO meta_insights (time, run, text, version, children, call, items, dropped)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), run, text, version, children, call,
                 json.dumps([dict(i) for i in items], default=str),
                 json.dumps([dict(d) for d in dropped], default=str)),
            )  # fmt: skip
        return version

    def insights(self, run: str | None = None, limit: int = 20) -> list[str]:
        """The texts of the most recent versions, oldest of them first (the last is the current)."""
        return [i.text for i in self.insight_versions(run, limit=limit)]

    def insight_versions(self, run: str | None = None, limit: int | None = None) -> list[Insight]:
        """Versions of the meta-insights, oldest first (the `limit` newest when given)."""
        sql = "SELECT * FROM meta_insights" + (" WHERE run = ?" if run else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_insight(r) for r in reversed(self._query(sql, (run,) if run else ()))]


def _pack(text: str) -> bytes:
    return zlib.compress(text.encode(), 6)


def _unpack(data: bytes) -> str:
    return zlib.decompress(data).decode(errors="replace")
