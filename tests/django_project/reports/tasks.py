"""The reports app's tasks: two live (one in the bare form), one retired with a handler."""

from shop.models import Event

import versioned_tasks
from versioned_tasks.contrib.djhuey import tombstone, versioned_task


@versioned_task(version=1, name="reports.weekly_summary")
def weekly_summary(week: int) -> int:
    return week


@tombstone("reports.legacy_export")
def legacy_export_retired(retired) -> None:
    Event.objects.create(
        kind="retired", detail=f"{retired.task} v{retired.version} {retired.payload}"
    )


# The bare form: bound to the default app, which in Django is djhuey's instance.
@versioned_tasks.versioned_task(version=2, name="reports.archive_month")
def archive_month(month: str, compress: bool) -> None:
    Event.objects.create(kind="archived", detail=f"{month} compress={compress}")


@versioned_tasks.upcaster("reports.archive_month", from_version=1)
def compress_by_default(payload: dict) -> dict:
    return {**payload, "compress": True}
