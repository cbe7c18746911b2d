"""Before the retirement: reports can still be exported as XLS, some on a schedule."""

from __future__ import annotations

from versioned_tasks import VersionedMemoryHuey

huey = VersionedMemoryHuey("reports")


@huey.versioned_task(version=1, name="reports.export_xls")
def export_xls(report_id: int, recipient_email: str, sheet_name: str = "Report") -> str:
    """Render a report as an XLS workbook and email it."""
    return f"report {report_id} sent as XLS to {recipient_email}"
