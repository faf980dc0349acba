from __future__ import annotations

from django.apps import AppConfig

from .core.errors import install_log_redaction


class DjangoAzureMIConfig(AppConfig):
    name = "django_azure_mi"
    verbose_name = "Azure Managed Identity"

    def ready(self) -> None:
        from django.core import checks
        from django.core.signals import setting_changed

        from . import checks as our_checks
        from . import runtime

        setting_changed.connect(runtime.on_setting_changed, dispatch_uid="django_azure_mi.runtime")
        checks.register(our_checks.check_settings, "django_azure_mi")
        import azure.identity  # noqa: F401 - its loggers must exist to get the filter

        install_log_redaction()  # tokens and SAS signatures out of the azure, msal and urllib3 log lines
        self.warm_up()

    def warm_up(self) -> None:
        """``AZURE_MANAGED_IDENTITY["WARM_UP"]``: tokens (and first connections) in the background. A bad
        setting is left to the system check that reports it."""
        from . import runtime
        from .diagnostics import SettingError

        try:
            mode = runtime.get().config.warm_up
        except SettingError:
            return
        if mode:
            from .warmup import warm_up

            warm_up(connections=mode is True)
