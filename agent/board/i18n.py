"""The board's labels in English and Japanese (``?lang=ja``), the seed plant's language.

Downtime reasons are the config's ids; the common ones have labels here, any other is shown
as configured.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["LABELS", "Lang", "labels"]

Lang = Literal["en", "ja"]

LABELS: dict[str, dict[str, str]] = {
    "title": {"en": "Plant board", "ja": "生産ボード"},
    "plant": {"en": "Plant", "ja": "工場"},
    "line": {"en": "Line", "ja": "ライン"},
    "hour": {"en": "This hour", "ja": "この1時間"},
    "shift": {"en": "Shift", "ja": "直"},
    "today": {"en": "Today", "ja": "本日"},
    "units": {"en": "Units", "ja": "台数"},
    "target": {"en": "Target", "ja": "目標"},
    "ahead": {"en": "ahead", "ja": "先行"},
    "behind": {"en": "behind", "ja": "遅れ"},
    "attainment": {"en": "Attainment", "ja": "達成率"},
    "state": {"en": "State", "ja": "状態"},
    "for": {"en": "for", "ja": "経過"},
    "updated": {"en": "Updated", "ja": "更新"},
    "stale": {"en": "STALE", "ja": "更新停止"},
    "offline": {"en": "AGENT OFFLINE", "ja": "エージェント停止"},
    "live": {"en": "live", "ja": "接続中"},
    "reconnecting": {"en": "reconnecting", "ja": "再接続中"},
    "year": {"en": "Year to date", "ja": "年初来"},
    "plan": {"en": "Plan", "ja": "計画"},
    "projected": {"en": "Projected year", "ja": "年間見込み"},
    "rate_needed": {"en": "Needed per day", "ja": "必要日産"},
    "days_left": {"en": "Production days left", "ja": "残り稼働日"},
    "measured_since": {"en": "Measured since", "ja": "計測開始"},
    "measured": {"en": "Measured", "ja": "計測値"},
    "recorded": {"en": "Recorded, not measured", "ja": "記録値 (計測外)"},
    "through": {"en": "through", "ja": "対象期間末"},
    "shift_hours": {"en": "This shift hour by hour", "ja": "当直の時間別実績"},
    "break": {"en": "break", "ja": "休憩"},
    "previous": {"en": "Previous shifts", "ja": "過去の直"},
    "oee": {"en": "OEE", "ja": "設備総合効率"},
    "availability": {"en": "Availability", "ja": "時間稼働率"},
    "performance": {"en": "Performance", "ja": "性能稼働率"},
    "quality": {"en": "Quality", "ja": "良品率"},
    "coverage": {"en": "Coverage", "ja": "計測率"},
    "pareto": {"en": "Downtime this shift (min)", "ja": "当直の停止時間 (分)"},
    "history": {"en": "History", "ja": "履歴"},
    "by_hour": {"en": "Hour", "ja": "時間"},
    "by_day": {"en": "Day", "ja": "日"},
    "by_week": {"en": "Week", "ja": "週"},
    "csv": {"en": "Shift reports (CSV)", "ja": "直報告 (CSV)"},
    "date": {"en": "Date", "ja": "日付"},
    "time": {"en": "Time", "ja": "時刻"},
    "off_shift": {"en": "off shift", "ja": "非稼働"},
    "running": {"en": "running", "ja": "稼働"},
    "unknown": {"en": "unknown", "ja": "不明"},
    "stopped": {"en": "stopped", "ja": "停止"},
    "faulted": {"en": "fault", "ja": "故障"},
    "fault": {"en": "fault", "ja": "故障"},
    "starved": {"en": "starved", "ja": "部品待ち"},
    "blocked": {"en": "blocked", "ja": "後工程待ち"},
    "changeover": {"en": "changeover", "ja": "段取り替え"},
    "maintenance": {"en": "maintenance", "ja": "保全"},
    "no_data": {"en": "No window committed yet", "ja": "まだデータがありません"},
    "min": {"en": "min", "ja": "分"},
}


def labels(lang: Lang) -> dict[str, str]:
    """Every label in ``lang``."""
    return {key: texts[lang] for key, texts in LABELS.items()}
