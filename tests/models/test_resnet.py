"""ResNet encoders: sizes and layer names."""
import pytest

from simclr_med.models import resnet


@pytest.mark.parametrize("depth,dim,params", [(18, 512, 11_186_112), (50, 2048, 23_561_152)])
def test_standard_sizes(depth, dim, params):
    enc = resnet.build_resnet(depth)
    assert enc.output_shape == (None, dim) and enc.count_params() == params
    assert resnet.feature_dim(depth, 1) == dim
    assert resnet.build_resnet(18, 2).output_shape == (None, 1024)


def test_stage_names_exist():
    enc = resnet.build_resnet(18)
    for name in resnet.stage_output_names(18):
        enc.get_layer(name)
