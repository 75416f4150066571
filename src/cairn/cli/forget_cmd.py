"""`cairn forget`: remove snapshots by a retention policy or by id."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from cairn.cli.context import State, global_options, pass_state
from cairn.cli.output import local_time
from cairn.cli.prune_cmd import build_options, prune_options, pruned, run_prune
from cairn.cli.snapshots_cmd import filter_options, make_filter, parse_groups
from cairn.errors import UsageError
from cairn.ops import access
from cairn.ops.forget import ForgetOptions, ForgetResult, forget
from cairn.policy.retention import UNLIMITED, Duration, Policy


class Count(click.ParamType):
    name = "N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if str(value).strip().lower() == "unlimited":
            return UNLIMITED
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a count: give a number or 'unlimited'", param, ctx)
        if number < 0:
            self.fail(f"{value!r}: a count cannot be negative (use 'unlimited')", param, ctx)
        return number


class DurationType(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Duration:
        if isinstance(value, Duration):
            return value
        try:
            return Duration.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_BUCKETS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_WITHIN = ("hourly", "daily", "weekly", "monthly", "yearly")


def policy_options(f: Any) -> Any:
    for name in reversed(_WITHIN):
        f = click.option(f"--keep-within-{name}", type=DurationType(), default=None,
                         help=f"Keep the newest snapshot of each {name[:-2] if name != 'daily' else 'day'} "
                         "within this duration of the newest snapshot.")(f)
    f = click.option("--keep-within", type=DurationType(), default=None,
                     help="Keep every snapshot within DURATION (1y6m, 7d, 36h) of the newest one.")(f)
    f = click.option("--keep-tag", "keep_tags", multiple=True, metavar="TAG[,TAG]",
                     help="Keep snapshots with these tags ('a,b' needs both; repeatable).")(f)
    for name in reversed(_BUCKETS):
        f = click.option(f"--keep-{name}", type=Count(), default=0,
                         help=f"Keep the newest of the last N {name} buckets (N or 'unlimited')."
                         if name != "last" else "Keep the N newest snapshots (N or 'unlimited').")(f)
    return f


def _policy(params: dict[str, Any]) -> Policy:
    within: dict[str, Any] = {f"within_{n}": params[f"keep_within_{n}"] or Duration() for n in _WITHIN}
    tags = tuple(frozenset(t for t in spec.split(",") if t) for spec in params["keep_tags"])
    return Policy(
        **{n: params[f"keep_{n}"] for n in _BUCKETS}, within=params["keep_within"] or Duration(),
        tags=tuple(t for t in tags if t), **within,
    )


def show(state: State, result: ForgetResult) -> None:
    out = state.output
    if out.json_mode:
        out.json(result.to_json())
        return
    for verdict in result.groups:
        out.result(f"snapshots for {verdict.key.describe()}:")
        if verdict.keep:
            rows = [[k.snapshot.short_id, local_time(k.snapshot.time), k.snapshot.host, ",".join(k.snapshot.tags),
                     "\n".join(k.reasons)] for k in verdict.keep]
            out.table(["ID", "time", "host", "tags", "kept because"], rows, footer=f"keep {len(verdict.keep)} snapshots")
        if verdict.remove:
            rows = [[s.short_id, local_time(s.time), s.host, ",".join(s.tags)] for s in verdict.remove]
            verb = "would remove" if result.dry_run else "remove"
            out.table(["ID", "time", "host", "tags"], rows, footer=f"{verb} {len(verdict.remove)} snapshots")
        out.result("")
    if not result.dry_run:
        out.result(f"removed {len(result.removed)} snapshots")


@click.command("forget")
@global_options
@policy_options
@click.option("--group-by", default="host,paths", show_default=True, metavar="FIELDS",
              help="Apply the policy to each group of snapshots sharing these (host, paths, tags; '' for one group).")
@filter_options
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be kept (and why) and removed.")
@click.option("--prune", "then_prune", is_flag=True,
              help="Run prune right after (with --dry-run: show what it would do).")
@prune_options
@click.argument("snapshot_ids", nargs=-1, metavar="[SNAPSHOT]...")
@pass_state
def command(state: State, group_by: str, hosts: tuple[str, ...], tags: tuple[str, ...], paths: tuple[str, ...],
            kinds: tuple[str, ...], dry_run: bool, then_prune: bool, max_unused: str, max_repack_size: str | None,
            snapshot_ids: tuple[str, ...], **params: Any) -> None:
    """Remove snapshots by id, or those a retention policy does not keep.

    The policy applies to each group (by default: host and paths) on its own; buckets use the
    local time where each snapshot was taken. See docs/RETENTION.md for the exact rules.
    Data is freed by prune (--prune runs it now; with --dry-run, it shows what that prune
    would do). With --json and --prune, one document: {"forget": ..., "prune": ...}.
    """
    try:
        policy = _policy(params)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options = ForgetOptions(
        policy=policy, filter=make_filter(hosts, tags, paths, kinds), group_by=parse_groups(group_by),
        snapshots=snapshot_ids, dry_run=dry_run,
    )
    prune_opts = build_options(max_unused, max_repack_size, dry_run) if then_prune else None
    repo = access.open_repository(state.selection())
    result = forget(repo, options)
    if prune_opts is None:
        show(state, result)
        return
    if dry_run:
        # Show what the prune after a real forget would do: as if those snapshots were gone.
        doomed = frozenset(bytes.fromhex(s.id) for g in result.groups for s in g.remove)
        prune_opts = dataclasses.replace(prune_opts, ignore_snapshots=doomed)
    if not state.output.json_mode:
        show(state, result)
        run_prune(state, repo, prune_opts)
        return
    # One JSON document for both steps; if prune fails, what forget did is still printed.
    try:
        prune_result = pruned(state, repo, prune_opts)
    except BaseException:
        state.output.json({"forget": result.to_json(), "prune": None})
        raise
    state.output.json({"forget": result.to_json(), "prune": prune_result.to_json()})
