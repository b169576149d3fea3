"""Host-platform setup that must run before JAX is imported."""


def configure() -> None:
  """Chooses the host device layout for this machine (no-op for now)."""


configure()
