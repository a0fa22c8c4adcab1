from pathlib import Path


class EfficientnetLite0ModelFile:
    @staticmethod
    def get_model_file_path() -> str:
        return str(Path(__file__).resolve().parents[2] / "backbones" / "efficientnet-lite0.fp16.pt")
