"""The reports app's tasks: one live, one retired with a handler."""

from shop.models import Event

from versioned_tasks.contrib.djhuey import tombstone, versioned_task


@versioned_task(version=1, name="reports.weekly_summary")
def weekly_summary(week: int) -> int:
    return week


@tombstone("reports.legacy_export")
def legacy_export_retired(retired) -> None:
    Event.objects.create(
        kind="retired", detail=f"{retired.task} v{retired.version} {retired.payload}"
    )
