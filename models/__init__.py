"""Score networks. Importing this package registers every architecture in ``models.utils``."""
from models import mlp  # noqa: F401
from models import ncsnv2  # noqa: F401
from models import ncsnpp, ddpm  # noqa: F401
