from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Event",
            fields=[
                ("id", models.AutoField(primary_key=True, serialize=False)),
                ("kind", models.CharField(max_length=40)),
                ("detail", models.CharField(max_length=200)),
                ("connection_open", models.BooleanField(null=True)),
            ],
        ),
    ]
