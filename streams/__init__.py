"""cpo: live contacts-per-order defect rates from Kafka order and contact streams."""

__version__ = "0.2.0"
