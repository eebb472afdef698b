from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    operations = [
        migrations.CreateModel(
            name="Cache",
            fields=[("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID"))],
            options={
                "verbose_name": "cache",
                "verbose_name_plural": "caches",
                "managed": False,
                "default_permissions": ("view", "delete"),
            },
        ),
    ]
