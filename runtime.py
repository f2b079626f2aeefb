"""The run machinery every script shares: configuration and errors, device and precision,
randomness, checkpoints, distributed training, and the training loop's bookkeeping.

utils.py holds the image maths (what is computed); this module holds how a run is driven (how
the scripts are configured, where they run, what they save). Importing it picks no device,
creates no tensor and reads no file.
"""
import ast
import csv
import math
import os
import random
import sys
import time
import types

import numpy as np
import torch

import degradations
import utils


# ----------------------------------------------------------------------------------------------
# Config and errors
# ----------------------------------------------------------------------------------------------

class ConfigError(ValueError):
    """A constant or command-line value that cannot work; the message says which and why."""


INTERRUPTED = ("interrupted: every file reported as written is complete and kept; the one being written was "
               "not kept (nothing is left under its name, and its temporary file is removed); a training run "
               "resumes from its last checkpoint with --checkpoint")


def error_line(error):
    """One line that says what went wrong, naming the file where the error has one."""
    message = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:  # not the project's own messages
        message = f"cannot write or read {error.filename}: {error.strerror}"
    return ' '.join(message.split())


def run_script(main, script_file):
    """Run a script's main(sys.argv[1:]), turning the project's expected errors into one line.

    Bad paths, values, lists and checkpoints (FileNotFoundError, ValueError) and failed writes
    (OSError: a full disk, a read-only folder) print `script: error: message` on stderr and exit
    with code 1, with no traceback; an interrupt (Ctrl-C) prints what was kept and exits with
    130, as a shell does. Anything else is a bug and keeps its traceback.
    """
    script = os.path.basename(script_file)
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:
        print(f"\n{script}: {INTERRUPTED}", file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError, TrainingDiverged) as error:
        sys.exit(f"{script}: error: {error_line(error)}")


def require(condition, message):
    """Raise ConfigError(message) unless condition holds: for checking config values up front."""
    if not condition:
        raise ConfigError(message)


def parse_config(script_globals, argv):
    """Apply `--key=value` overrides to a script's typed top-of-file constants.

    The constants are the script's annotated globals (`batch_size: int = 16`). Values parse as
    Python literals where they can, else as strings. An unknown key or a value of the wrong type
    is refused before anything is printed or any work starts. The script's globals are left as
    they are (so main() can run again in the same process), and the config is returned as a
    namespace: vars(config) is the snapshot printed and stored in checkpoints.
    """
    annotations = script_globals.get('__annotations__') \
        or getattr(sys.modules.get(script_globals.get('__name__')), '__annotations__', {})  # Python 3.14 is lazy
    script = os.path.basename(script_globals.get('__file__', 'script'))
    if any(arg in ('-h', '--help') for arg in argv):
        print(f"usage: python {script} [--key=value ...]\n\nconstants and their defaults:")
        for key in annotations:
            print(f"  --{key}={script_globals[key]!r}")
        sys.exit(0)
    config = {key: script_globals[key] for key in annotations}
    overrides = {}
    for arg in argv:
        if not arg.startswith('--') or '=' not in arg:
            raise ConfigError(f"arguments take the form --key=value, got {arg!r}")
        key, text = arg[2:].split('=', 1)
        if key not in annotations:
            raise ConfigError(f"unknown key {key!r}; known keys: {', '.join(annotations)}")
        expected = annotations[key]
        if expected is str:
            # A path or a name: --checkpoint=123 means the file "123", and a quoted '' means empty.
            value = text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in '"\'' else text
        else:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if expected is float and type(value) is int:
                value = float(value)
            if expected is list and isinstance(value, tuple):
                value = list(value)
            if type(value) is not expected:
                raise ConfigError(f"--{key} must be of type {expected.__name__}, got {text!r}")
        overrides[key] = value
    for key, value in overrides.items():
        print(f"Overriding: {key} = {value!r}")
    config.update(overrides)
    return types.SimpleNamespace(**config)


# ----------------------------------------------------------------------------------------------
# Device, precision, randomness
# ----------------------------------------------------------------------------------------------

def pick_device(name='auto'):
    """torch.device for 'auto' (cuda, then mps, then cpu) or an explicit name such as 'cuda:1'."""
    if name == 'auto':
        if torch.cuda.is_available():
            name = 'cuda'
        elif getattr(torch.backends, 'mps', None) is not None and torch.backends.mps.is_available():
            name = 'mps'
        else:
            name = 'cpu'
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a device name (try 'auto', 'cpu', 'cuda' or 'cuda:1')") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but this machine has no CUDA GPU (try device='auto' or 'cpu')")
    backend = getattr(torch.backends, device.type, None) if device.type == 'mps' else getattr(torch, device.type, None)
    if device.type not in ('cpu', 'cuda') and not (backend is not None and backend.is_available()):
        raise ConfigError(f"device {name!r} asked for, but this machine has no {device.type} device "
                          f"(try device='auto' or 'cpu')")
    if device.type == 'cuda' and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} asked for, but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def cpu_has_bf16_matrix_units():
    """Whether this CPU multiplies bf16 matrices on tile units (Intel AMX, Sapphire Rapids and later).

    Where it does, oneDNN's bf16 convolutions slow down with the width of the rows they read, so the
    upsampling end runs on column strips there (super_resolve.prepare_for_backend). torch exposes the
    test privately (torch.cpu._is_amx_tile_supported); a torch without it counts as no AMX.
    """
    return _torch_cpu_check('_is_amx_tile_supported')


def cpu_has_bf16_arithmetic():
    """Whether this CPU computes bf16 in hardware: on AMX's tile units (cpu_has_bf16_matrix_units)
    or with AVX-512 BF16's dot products (Intel Cooper Lake, AMD Zen 4 and later).

    On both, oneDNN runs bf16 convolutions well ahead of float32: an SRResNet training step under
    bf16 autocast took about half the time of float32 on a 2-core Xeon with AMX and 0.52x on a
    2-core Zen 4 EPYC, and inference ran 3.6-3.8x and 2.1-2.2x as fast. On a CPU with neither, bf16
    ran 10x slower than float32 (a Zen 3 EPYC), so bf16 is chosen only where one of them is.
    """
    return cpu_has_bf16_matrix_units() or _torch_cpu_check('_is_avx512_bf16_supported')


def cpu_has_int8_dot_products():
    """Whether this CPU multiplies int8 in hardware with AVX-512 VNNI's dot products (Intel Cascade
    Lake, AMD Zen 4 and later; every CPU with AMX has them too), where OpenVINO's int8 ran 1.13-1.62x
    its bf16 (backends.openvino_precision). torch exposes the test privately (torch.cpu._is_vnni_supported).
    """
    return cpu_has_bf16_matrix_units() or _torch_cpu_check('_is_vnni_supported')


def _torch_cpu_check(name):
    """torch.cpu's private test `name`, False where this torch has no such test or cannot run it."""
    is_supported = getattr(torch.cpu, name, None)
    try:
        return bool(is_supported and is_supported())
    except RuntimeError:  # a torch built without the check's CPU support
        return False


def amp_settings(device, amp):
    """(autocast dtype or None, use a GradScaler?): the one place training precision is decided.

    amp: 'auto' is bf16 on CUDA cards that support it, else fp16 with a GradScaler (fp16's narrow
    range needs loss scaling, bf16's does not); bf16 on a CPU that computes it in hardware
    (cpu_has_bf16_arithmetic: AMX, AVX-512 BF16), which runs a step about twice as fast as float32;
    off elsewhere. 'bf16', 'fp16' and 'off' force a choice (both run on any CPU too, which is how
    the tests exercise the mixed-precision paths). Validation and inference stay in float32 whatever
    this says (super_resolve.py's precision is inference_dtype's).
    """
    if amp not in ('auto', 'bf16', 'fp16', 'off'):
        raise ValueError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {amp!r}")
    if amp == 'auto':
        if device.type == 'cpu' and cpu_has_bf16_arithmetic():
            return torch.bfloat16, False
        if device.type != 'cuda':
            return None, False
        amp = 'bf16' if torch.cuda.is_bf16_supported() else 'fp16'
    if amp == 'off':
        return None, False
    if amp == 'fp16':
        return torch.float16, True
    return torch.bfloat16, False


# The precisions inference_dtype takes by name, and the dtype each computes in.
PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def inference_dtype(device, precision='auto'):
    """The dtype a model computes in on `device` for a `precision` of 'auto', 'fp32', 'bf16' or 'fp16'.

    'auto' is float16 on CUDA, bfloat16 on a CPU that computes it in hardware (AMX or AVX-512 BF16:
    cpu_has_bf16_arithmetic), float32 elsewhere.
    Measured with the shipped SRResNet and SRGAN-MSE on Set14 (results/README.md's table), either
    half precision moved PSNR by at most 0.0011 dB, well inside the 0.02 dB that 'auto' may cost,
    and a pixel by at most 9 grey levels. bf16 ran 3.6-3.8x faster than float32 on a Xeon with AMX
    and 2.1-2.2x on a Zen 4 EPYC (AVX-512 BF16);
    fp16 ran at 0.72x float32's speed on that CPU, so it is chosen only on CUDA, where its
    differences are those measured with fp16 on that CPU (cuDNN may round a little differently)
    and its speed was not measured on a GPU. A CPU with neither runs bf16 convolutions far slower
    than float32 (10x in training on a Zen 3 EPYC), so it stays float32.
    """
    if precision not in ('auto', *PRECISIONS):
        raise ConfigError(f"precision must be 'auto', 'fp32', 'bf16' or 'fp16', got {precision!r}")
    if precision == 'auto':
        if device.type == 'cuda':
            return torch.float16
        if device.type == 'cpu' and cpu_has_bf16_arithmetic():
            return torch.bfloat16
        return torch.float32
    return PRECISIONS[precision]


def keep_freed_memory():
    """Make the C allocator keep freed memory for reuse instead of handing it back to the system
    (glibc on Linux; elsewhere this does nothing). Returns whether it took effect.

    By default glibc gives each large block (over 128 KiB at first, up to 32 MiB as it adapts) its
    own mapping, and unmaps it when it is freed. A training step frees and re-allocates the same
    large activations every iteration, so on a CPU each step page-faults them back in, zero-filled,
    4 KiB at a time: about 75,000 faults per SRResNet step at batch 16, which cost about a tenth of
    the step on a 2-core EPYC. With large blocks taken from the heap and the heap never trimmed,
    the next step reuses the memory the last one freed. The process keeps its peak memory instead
    of returning it between steps; what is learned does not change.
    """
    if not sys.platform.startswith('linux'):
        return False
    import ctypes  # imported here: only CPU training on Linux needs it
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h> constants
    # Blocks up to 1 GiB from the heap; a glibc that refuses that much still takes its own cap, 32 MiB.
    mapped = mallopt(m_mmap_threshold, 1 << 30) or mallopt(m_mmap_threshold, 32 << 20)
    return bool(mapped and mallopt(m_trim_threshold, 2 ** 31 - 1))


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states():
    """The random number generators' states, for a checkpoint, in types that weights_only loads."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states = {'python': random.getstate(), 'numpy': (name, keys.tolist(), position, has_gauss, cached_gaussian),
              'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what rng_states() returned."""
    random.setstate(states['python'])
    name, keys, position, has_gauss, cached_gaussian = states['numpy']
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------

def save_checkpoint(state, path, exists='refuse'):
    """torch.save through atomic_write, so that a crash or a kill never leaves a torn checkpoint.
    exists: as for utils.atomic_write ('replace' for a run's own checkpoint). Returns the path taken."""
    with utils.atomic_write(path, exists=exists) as f:
        torch.save(state, f)
    return f.final_path


def load_checkpoint(path, map_location='cpu', required_keys=(), kind='checkpoint'):
    """Load a checkpoint dict safely (weights_only=True: no code is unpickled).

    Args:
        path: the .pth file.
        map_location: where tensors go, so a GPU-saved checkpoint loads on a CPU-only machine.
        required_keys: keys the dict must have; a missing one is a clear error naming the file.
        kind: what the caller expects, for the error messages ('SRResNet checkpoint', ...).
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"{kind} not found: {path!r}")
    with open(path, 'rb') as f:
        head = f.read(64)
    if not head:
        raise ValueError(f"{path} is empty (0 bytes), not a checkpoint")
    if head.startswith(b'version https://git-lfs'):
        raise ValueError(f"{path} is a Git LFS pointer, not the checkpoint itself: fetch it with `git lfs pull`")
    # torch.save writes a zip archive ('PK'); PyTorch before 1.6 wrote a pickle (protocol 2: b'\x80').
    if not head.startswith((b'PK', b'\x80')):
        what = 'text' if all(32 <= byte < 127 or byte in b'\t\r\n' for byte in head) else 'other data'
        raise ValueError(f"{path} is not a PyTorch checkpoint: it holds {what}, starting {head[:24]!r}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} could not be loaded as a {kind} with weights_only=True: {error}") from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a {kind}: it holds a {type(checkpoint).__name__}, not a dict")
    missing = [key for key in required_keys if key not in checkpoint]
    if missing:
        raise ValueError(f"{path} is not a {kind}: it lacks the keys {missing} (it has {sorted(checkpoint)})")
    return checkpoint


TRAINERS = {'srresnet': 'train_srresnet.py', 'srgan': 'train_srgan.py'}  # the script that makes each kind


def train_hint(kind):
    """What to do about a missing or wrong checkpoint of `kind` ('srresnet' or 'srgan'), for error messages."""
    return f"Train one with `python {TRAINERS[kind]}`"


def degradation_of(checkpoint):
    """How the LR inputs a checkpoint's model was trained on were made: 'bicubic' (the paper's
    clean shrink, and every checkpoint older than the option), 'realistic' or 'ladder'
    (degradations.py), from checkpoint['config']['degradation']."""
    config = checkpoint.get('config')
    degradation = config.get('degradation', 'bicubic') if isinstance(config, dict) else 'bicubic'
    if degradation not in degradations.DEGRADATIONS:
        raise ValueError(f"config degradation is {degradation!r}, not one of {degradations.DEGRADATIONS}")
    return degradation


def weights_key(checkpoint):
    """Where a checkpoint keeps its SRResNet weights: 'model' (SRResNet checkpoints), else
    'generator' (SRGAN checkpoints; the caller checks that the key is there)."""
    return 'model' if 'model' in checkpoint else 'generator'


def load_sr_model(path, device='cpu', kind=''):
    """Rebuild a trained SRResNet or SRGAN generator from its checkpoint, in eval mode.

    Accepts this project's SRResNet checkpoints ('model') and SRGAN checkpoints ('generator'),
    both with 'model_args'. kind: 'srresnet' or 'srgan' insists on that kind of checkpoint (a
    clear error naming the file otherwise); '' takes either. Returns (model, checkpoint dict).

    Everything is checked before the network is built, and a problem is a ValueError naming the
    file (load_checkpoint says what an empty file, a text file or a Git LFS pointer is); 'model_args' must hold
    SRResNet's own argument names with int values, and each (or, for a missing key, SRResNet's
    default) must agree with the weights' shapes. So a damaged or hand-edited checkpoint asking
    for 20,000 residual blocks fails at once, instead of after allocating them.
    """
    import inspect  # local imports: models' import stays one-way, and inspect is needed only here
    from models import SRResNet
    names = {'': 'SRResNet or SRGAN checkpoint', 'srresnet': 'SRResNet checkpoint', 'srgan': 'SRGAN checkpoint'}
    if kind not in names:
        raise ValueError(f"kind must be '', 'srresnet' or 'srgan', got {kind!r}")
    checkpoint = load_checkpoint(path, map_location='cpu', required_keys=('model_args',), kind=names[kind])
    key = {'srresnet': 'model', 'srgan': 'generator'}.get(kind) or weights_key(checkpoint)
    if key not in checkpoint or (kind == 'srresnet' and 'generator' in checkpoint):
        raise ValueError(f"{path} is not an {names[kind]}: it has the keys {sorted(checkpoint)} (SRResNet "
                         f"checkpoints hold 'model', SRGAN checkpoints 'generator')")

    model_args, state_dict = checkpoint['model_args'], checkpoint[key]
    if not isinstance(model_args, dict):
        raise ValueError(f"{path}: 'model_args' must be a dict of SRResNet arguments, "
                         f"got a {type(model_args).__name__}")
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(tensor) for tensor in state_dict.values()):
        raise ValueError(f"{path}: {key!r} must be a state_dict (a dict of tensors)")
    parameters = inspect.signature(SRResNet).parameters  # large_kernel_size=9, ..., scaling_factor=4
    unknown = sorted(set(model_args) - set(parameters), key=str)
    if unknown:
        raise ValueError(f"{path}: model_args has unknown keys {unknown}; SRResNet takes {list(parameters)}")
    not_ints = {name: value for name, value in model_args.items()
                if type(value) is not int or value < (0 if name == 'n_blocks' else 1)}  # bool is no int here
    if not_ints:
        raise ValueError(f"{path}: model_args values must be positive ints, got {not_ints}")
    args = {name: model_args.get(name, parameter.default) for name, parameter in parameters.items()}

    # What the weights say, from a few shapes and the numbered blocks, checked before anything is built.
    first = tuple(state_dict.get('conv_block1.conv_block.0.weight', torch.empty(0)).shape)  # (C, 3, large, large)
    middle = tuple(state_dict.get('conv_block2.conv_block.0.weight', torch.empty(0)).shape)  # (C, C, small, small)
    if len(first) != 4 or len(middle) != 4:
        raise ValueError(f"{path}: {key!r} is not an SRResNet's state_dict: it lacks the weights of "
                         f"conv_block1 or conv_block2 (its first keys: {list(state_dict)[:4]})")
    blocks = {name.split('.')[1] for name in state_dict if name.startswith('residual_blocks.')}
    upscales = {name.split('.')[1] for name in state_dict if name.startswith('subpixel_convolutional_blocks.')}
    found = {'large_kernel_size': first[-1], 'small_kernel_size': middle[-1], 'n_channels': first[0],
             'n_blocks': len(blocks), 'scaling_factor': 2 ** len(upscales)}  # one x2 sub-pixel block per doubling
    mismatches = [f"{name}={args[name]}{'' if name in model_args else ' (the default: model_args lacks it)'}, "
                  f"the weights {value}" for name, value in found.items() if args[name] != value]
    if mismatches:
        raise ValueError(f"{path}: model_args do not match the weights: {'; '.join(mismatches)}")
    try:
        model = SRResNet(**args)
        model.load_state_dict({name: tensor.float() for name, tensor in state_dict.items()})
    except (ValueError, RuntimeError) as error:  # a scaling factor SRResNet refuses; a missing or misshapen layer
        raise ValueError(f"{path}: the weights do not fit SRResNet({args}): {error}") from None
    return model.to(device).eval(), checkpoint


# ----------------------------------------------------------------------------------------------
# Network interpolation (Wang et al., ESRGAN, 2018, section 3.4): models fine-tuned from one
# ancestor can be mixed weight by weight, and the mix behaves in between. Four corners, bilinear:
#   (denoise, texture) = (0, 0) the SRResNet, (1, 0) the real-photo SRResNet,
#                        (0, 1) the SRGAN, (1, 1) the real-photo SRGAN.
# ----------------------------------------------------------------------------------------------
CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (denoise, texture) of each corner, in the order of the paths


def corner_weights(denoise, texture):
    """The bilinear weights of the four CORNERS at (denoise, texture), each in [0, 1]; they sum to 1."""
    return tuple((denoise if d else 1 - denoise) * (texture if t else 1 - texture) for d, t in CORNERS)


def check_blend_value(name, value):
    """A blend coordinate as a float in [0, 1], or a ConfigError naming the option."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


class Blend:
    """The corner checkpoints of a blend, read and checked once; model(denoise, texture) mixes them.

    Args:
        paths: the four corner files, in the order of CORNERS.
        needed: which of them to read (a run with texture 0 never needs the SRGANs).
    Each file is checked as load_sr_model checks one (a ValueError naming it if it is not a
    generator of this project), and corners whose model_args differ are refused, naming the
    file: their weights cannot be mixed.
    """

    def __init__(self, paths, needed=(True, True, True, True)):
        import inspect
        from models import SRResNet
        defaults = {name: parameter.default for name, parameter in inspect.signature(SRResNet).parameters.items()}
        self.paths, self.states, self.checkpoints, self.args = list(paths), [None] * len(CORNERS), [None] * len(CORNERS), None
        for i, (path, wanted) in enumerate(zip(paths, needed)):
            if not wanted:
                continue
            model, checkpoint = load_sr_model(path, 'cpu')
            args = {**defaults, **checkpoint['model_args']}  # load_sr_model checked them against the weights
            if self.args is not None and args != self.args:
                first = next(p for p, state in zip(paths, self.states) if state is not None)
                raise ValueError(f"{path}: model_args {args} differ from {first}'s {self.args}: only models of "
                                 f"one shape, fine-tuned from one ancestor, can be blended")
            self.args, self.states[i], self.checkpoints[i] = args, model.state_dict(), checkpoint  # float32 states

    def model(self, denoise, texture, device='cpu'):
        """An SRResNet whose every parameter and BatchNorm statistic is the bilinear blend of the
        corners at (denoise, texture), in float32, in eval mode on `device`. Corners of weight 0
        are left out of the sum, so each corner point reproduces its own file exactly."""
        from models import SRResNet
        weights = corner_weights(denoise, texture)
        terms = [(weight, state) for weight, state in zip(weights, self.states) if weight > 0]
        missing = [path for weight, state, path in zip(weights, self.states, self.paths) if weight > 0 and state is None]
        if missing:
            raise ValueError(f"the blend at denoise={denoise:g}, texture={texture:g} needs {missing}, not loaded")
        blended = {}
        for name, tensor in terms[0][1].items():
            if len(terms) == 1 or not tensor.is_floating_point():  # num_batches_tracked: a count, unused in eval
                blended[name] = tensor.clone()
            else:
                blended[name] = sum(weight * state[name] for weight, state in terms)  # float32
        model = SRResNet(**self.args)
        model.load_state_dict(blended)
        return model.to(device).eval()


CORNER_KEYS = ('srresnet_checkpoint', 'srresnet_real_checkpoint', 'srgan_checkpoint', 'srgan_real_checkpoint')


def load_blend(config, denoise_values, texture_values):
    """The Blend of a script's four corner constants (CORNER_KEYS, in the order of CORNERS),
    reading only the corners that a blend at any of these values weighs: a run with texture 0
    needs no SRGAN file. denoise_values may hold 'auto', which can reach 0 and 1."""
    denoise_values = [value for d in denoise_values for value in ((0., 1.) if d == 'auto' else (d,))]
    needed = [any(corner_weights(d, t)[i] > 0 for d in denoise_values for t in texture_values)
              for i in range(len(CORNERS))]
    return Blend([getattr(config, key) for key in CORNER_KEYS], needed)


def blend_label(denoise, texture):
    """What a blend is called in tables and prints: 'SRResNet d0.5 t0.3', or 'SRResNet auto t0'
    when the denoise value is read from each input."""
    return f"SRResNet {'auto' if denoise == 'auto' else f'd{denoise:g}'} t{texture:g}"


def load_damage_model(path):
    """The damage classifier of denoise='auto' (fit_denoise.py's file), in eval mode on the CPU,
    and its map to denoise values ({'level_denoise': ..., 'power': ...}, degradations.auto_denoise).
    A file that is not one, or whose levels are not degradations.LADDER_LEVELS, is a ValueError
    naming it."""
    from models import DamageNet
    state = load_checkpoint(path, 'cpu', ('model', 'model_args', 'levels', 'level_denoise', 'power'),
                            kind='damage classifier (fit_denoise.py)')
    if list(state['levels']) != list(degradations.LADDER_LEVELS) or len(state['level_denoise']) != len(state['levels']) \
            or not all(isinstance(value, float) and 0 <= value <= 1 for value in state['level_denoise']) \
            or not (isinstance(state['power'], float) and state['power'] > 0):
        raise ValueError(f"{path}: its levels {state['levels']}, values {state['level_denoise']} and power "
                         f"{state['power']} are not one value in [0, 1] for each of "
                         f"{list(degradations.LADDER_LEVELS)} and a power > 0")
    try:
        model = DamageNet(**state['model_args'])
        model.load_state_dict(state['model'])
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{path}: the weights do not fit DamageNet({state['model_args']}): "
                         f"{' '.join(str(error).split())[:300]}") from None
    return model.eval(), {'level_denoise': list(state['level_denoise']), 'power': state['power']}


def load_training_checkpoint(path, required_keys, kind, model_args):
    """Load a checkpoint to resume, checking it has every key resumption needs and the model
    shape this run asks for (clear errors naming the file)."""
    state = load_checkpoint(path, 'cpu', required_keys, kind=kind)
    if state['model_args'] != model_args:
        raise ConfigError(f"{path} was trained with model_args {state['model_args']}, not {model_args}: "
                          f"resume with the same model constants")
    return state


def load_states(path, pairs):
    """Load each (module or optimizer or scaler, state_dict) pair, turning a mismatch into a
    one-line ValueError naming the checkpoint file."""
    for target, state in pairs:
        try:
            target.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as error:
            # All of it on one line: load_state_dict's first line is only "Error(s) in loading ...:".
            detail = ' '.join(str(error).split()) or type(error).__name__
            detail = detail if len(detail) <= 400 else detail[:400] + ' ...'
            raise ValueError(f"{path}: its {type(target).__name__} state does not fit this run: {detail}") from None


def best_psnr_in(path):
    """The best_psnr recorded in a best-checkpoint file, or -inf if there is none."""
    if not os.path.isfile(path):
        return float('-inf')
    return load_checkpoint(path, 'cpu', ('best_psnr',), kind='best checkpoint')['best_psnr']


def load_weights(model, path, model_args):
    """Initialise `model` from the SRResNet or generator weights of any of this project's
    checkpoints (training or shipped), leaving the optimizer fresh: the fine-tuning start."""
    state = load_checkpoint(path, 'cpu', ('model_args',), kind='checkpoint to initialise from')
    key = weights_key(state)
    if key not in state:
        raise ValueError(f"{path} holds no 'model' or 'generator' weights (it has {sorted(state)})")
    if state['model_args'] != model_args:
        raise ConfigError(f"{path} holds a model with model_args {state['model_args']}, not {model_args}")
    load_states(path, [(model, {name: tensor.float() for name, tensor in state[key].items()})])
    print(f"Weights initialised from {path} (iteration {state.get('iteration', '?')}), with a fresh optimizer")


def export_for_inference(path, out_path, exists='refuse'):
    """Write the small file that ships a trained model: its generator weights in float16 with
    model_args, iteration, config, best_psnr and train_seconds; no optimizer, no discriminator.
    exists: as for utils.atomic_write. Returns the path written."""
    state = load_checkpoint(path, 'cpu', ('model_args', 'iteration', 'config'), kind='training checkpoint')
    key = weights_key(state)
    small = {key: {name: tensor.half() if tensor.is_floating_point() else tensor
                   for name, tensor in state[key].items()}}
    small.update({name: state[name] for name in ('model_args', 'iteration', 'config', 'best_psnr', 'train_seconds')
                  if name in state})
    return save_checkpoint(small, out_path, exists)


def unwrap(model):
    """The plain module inside DistributedDataParallel or torch.compile wrappers, whose
    state_dict keys carry no 'module.' or '_orig_mod.' prefixes."""
    while hasattr(model, 'module') or hasattr(model, '_orig_mod'):
        # Not `getattr(...) or ...`: an empty nn.Sequential is falsy.
        model = model.module if hasattr(model, 'module') else model._orig_mod
    return model


# ----------------------------------------------------------------------------------------------
# Distributed training (torchrun)
# ----------------------------------------------------------------------------------------------

def setup_distributed(device_name):
    """Pick the device and, under torchrun, join the process group.

    Launched with plain `python`, this is single-process: (device, rank 0, world size 1), and no
    distributed code runs. Under `torchrun`, each process takes its own GPU (LOCAL_RANK) and
    joins with NCCL on CUDA or Gloo on the CPU. Returns (device, rank, world_size).
    """
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    device = pick_device(device_name)
    if world_size == 1:
        return device, 0, 1
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend='nccl' if device.type == 'cuda' else 'gloo')
    return device, torch.distributed.get_rank(), world_size


def wrap_distributed(model, device, sync_bn):
    """Wrap a model in DistributedDataParallel (under torchrun), optionally with SyncBatchNorm.

    SyncBatchNorm computes batch statistics over every process's batch, which matters when each
    process holds only a few images. PyTorch runs it on GPUs only, so on the CPU it is refused.
    The wrapped model's plain module (unwrap) still saves plain BatchNorm keys.
    """
    if sync_bn:
        if device.type != 'cuda':
            raise ValueError("sync_bn=True needs CUDA: PyTorch's SyncBatchNorm does not run on the CPU")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        n_sync = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        print(f"Rank {torch.distributed.get_rank()}: {n_sync} SyncBatchNorm layers")
    device_ids = [device.index] if device.type == 'cuda' else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def cleanup_distributed(*models):
    """Leave the process group, if there is one, with every rank holding rank 0's buffers.

    DDP keeps the parameters equal, and broadcasts rank 0's buffers (BatchNorm running statistics)
    before each forward pass; after the last one each rank has updated them with its own batch.
    Broadcasting them once more leaves every rank with the model rank 0 saved.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for model in models:
            for buffer in unwrap(model).buffers():
                torch.distributed.broadcast(buffer, src=0)
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Training: learning rate, gradients, config checks
# ----------------------------------------------------------------------------------------------

def make_adam(parameters, lr, device):
    """Adam, fused into a few kernels on CUDA (one launch for all parameters instead of several
    per tensor: the step never waits on Python), the default multi-tensor version elsewhere."""
    return torch.optim.Adam(parameters, lr=lr, fused=device.type == 'cuda' or None)


def learning_rate_at(iteration, lr, schedule, iterations, decay_at=0, decay=0.1, warmup=0):
    """The learning rate of 1-based `iteration`.

    schedule: 'step' (lr, times `decay` after iteration decay_at; decay_at=0 means never: the
    paper's schedules) or 'cosine' (lr falling along half a cosine to 0 at `iterations`).
    warmup: iterations of linear ramp from lr/warmup up to lr first (0 = none).
    """
    if schedule not in ('step', 'cosine'):
        raise ConfigError(f"lr_schedule must be 'step' or 'cosine', got {schedule!r}")
    if iteration <= warmup:
        return lr * iteration / warmup
    if schedule == 'cosine':
        progress = (iteration - 1 - warmup) / max(1, iterations - warmup)
        return lr * 0.5 * (1. + math.cos(math.pi * progress))
    return lr * decay if decay_at and iteration > decay_at else lr


def set_learning_rate(optimizer, lr):
    """Give every parameter group of `optimizer` this learning rate."""
    for group in optimizer.param_groups:
        group['lr'] = lr


def clip_gradient(optimizer, grad_clip):
    """Clamp every gradient element to [-grad_clip, grad_clip] (a guard against exploding gradients)."""
    for group in optimizer.param_groups:
        for param in group['params']:
            if param.grad is not None:
                param.grad.data.clamp_(-grad_clip, grad_clip)


def check_training_config(config):
    """Refuse values that cannot train, before any work starts (one ConfigError naming the key)."""
    for key in ('iterations', 'batch_size', 'crop_size', 'print_freq', 'save_freq'):
        require(getattr(config, key) > 0, f"{key} must be a positive integer, got {getattr(config, key)}")
    for key in ('val_freq', 'lr_decay_at', 'warmup_iterations', 'workers'):
        require(getattr(config, key) >= 0, f"{key} must be >= 0, got {getattr(config, key)}")
    require(config.lr > 0, f"lr must be positive, got {config.lr}")
    require(config.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {config.grad_clip}")
    learning_rate_at(1, config.lr, config.lr_schedule, config.iterations)  # checks the schedule's name
    if hasattr(config, 'degradation'):
        require(config.degradation in degradations.DEGRADATIONS,
                f"degradation must be one of {degradations.DEGRADATIONS}, got {config.degradation!r}")


def refuse_to_overwrite(path, overwrite, others=()):
    """A fresh run must not destroy an earlier run's checkpoint at `path`, or the other files it
    will write (`others`: its log, its plot), unless told to: from here on they are the run's own."""
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{path} holds an earlier run. Resume it with --checkpoint={path}, start elsewhere "
                          f"with --out_dir=..., or replace it with --overwrite=True")
    for other in others:
        if os.path.exists(other) and not overwrite:
            raise ConfigError(f"{other} exists and is kept: start elsewhere with --out_dir=..., or replace it "
                              f"with --overwrite=True")


# ----------------------------------------------------------------------------------------------
# Training: the monitor, its log, validation
# ----------------------------------------------------------------------------------------------

class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or infinite: the run stops, keeping its last good checkpoint."""


class TrainingMonitor:
    """The accounting of a training run, so that the loop itself shows only the method.

    The losses are summed on the device and read back once every `print_freq` iterations (the one
    host-device sync of the loop), when report() checks that they and the weights are finite,
    prints one line (losses, learning rate, ms per iteration, samples/s, ETA) and appends a row
    to the CSV log. Time spent validating and saving is not training time: restart_clock() after
    them. Ranks other than 0 keep the sums and checks but print and write nothing.

    Args:
        name: the model's name, for the progress bar.
        loss_names: the losses add() receives, in order.
        iterations, start_iteration: the run's length, and where it starts (resumed runs).
        print_freq: iterations between reports.
        samples_per_iteration: the global batch, for samples/s.
        log_path: the CSV log (its plot goes beside it), or None (ranks other than 0).
        train_seconds: training time before start_iteration.
        device: where the losses are summed.
    """

    def __init__(self, name, loss_names, iterations, start_iteration, print_freq, samples_per_iteration, log_path,
                 train_seconds, device):
        from tqdm import tqdm  # here, not at import time: only training needs it
        self.loss_names, self.iterations, self.print_freq = list(loss_names), iterations, print_freq
        self.samples_per_iteration, self.train_seconds = samples_per_iteration, train_seconds
        self.sums = torch.zeros(len(loss_names), device=device)
        self.n_summed, self.tick = 0, time.perf_counter()
        self.log = None
        if log_path:
            self.log = TrainingLog(log_path, ['iteration', 'train_seconds'] + self.loss_names
                                   + ['lr', 'ms_per_iteration', 'val_psnr', 'val_ssim'], resume_from=start_iteration)
        # The bar is for a person at a terminal; a log file (nohup) gets the compact lines alone.
        self.progress = tqdm(total=iterations, initial=start_iteration, desc=name, dynamic_ncols=True,
                             disable=not (log_path and sys.stderr.isatty()))

    def add(self, *losses):
        """Add this iteration's losses (scalar tensors) to the sums, without waiting for the device."""
        self.sums += torch.stack([loss.detach().float() for loss in losses])
        self.n_summed += 1
        self.progress.update(1)

    def due(self, iteration, *freqs):
        """Whether `iteration` reports: every print_freq, every one of `freqs` (save_freq, ...), the last."""
        return iteration == self.iterations or any(f and iteration % f == 0 for f in (self.print_freq,) + freqs)

    def report(self, iteration, lr, parameters):
        """Read the mean losses since the last report, check them and the weights, print and log.
        Returns {loss name: mean}; raises TrainingDiverged on a NaN or infinity."""
        means = dict(zip(self.loss_names, (self.sums / self.n_summed).tolist()))  # waits for the device
        ms = (time.perf_counter() - self.tick) * 1000 / self.n_summed
        self.train_seconds += ms * self.n_summed / 1000
        if not (all(math.isfinite(v) for v in means.values()) and all_finite(parameters)):
            self.close()
            raise TrainingDiverged(
                f"Stopping: a loss or a weight became non-finite ({means}) between iterations "
                f"{iteration - self.n_summed + 1} and {iteration}. The last good checkpoint is kept. "
                f"Try a lower lr, warmup_iterations, grad_clip, or amp='off'.")
        if self.log:
            eta_minutes = ms * (self.iterations - iteration) / 60_000
            losses = '  '.join(f"{name} {value:.5f}" for name, value in means.items())
            self.progress.write(f"[{iteration}/{self.iterations}] {losses}  lr {lr:.2e}  {ms:.1f} ms/it  "
                                f"{self.samples_per_iteration * 1000 / ms:.0f} samples/s  ETA {eta_minutes:.0f} min")
            self.log.log(iteration=iteration, train_seconds=f'{self.train_seconds:.1f}', lr=f'{lr:.3e}',
                         ms_per_iteration=f'{ms:.2f}', **{name: f'{value:.6f}' for name, value in means.items()})
        self.sums.zero_()
        self.n_summed = 0
        return means

    def report_validation(self, iteration, name, psnr, ssim):
        """Print and log a validation result."""
        if self.log:
            self.progress.write(f"[{iteration}/{self.iterations}] {name}: PSNR {psnr:.3f} dB, SSIM {ssim:.4f}")
            self.log.log(iteration=iteration, train_seconds=f'{self.train_seconds:.1f}', val_psnr=f'{psnr:.4f}',
                         val_ssim=f'{ssim:.5f}')

    def plot(self, panels):
        """Redraw the curves beside the CSV (TrainingLog.plot)."""
        if self.log:
            self.log.plot(panels)

    def restart_clock(self):
        """Start timing training again (after validating or saving, which are not training)."""
        self.tick = time.perf_counter()

    def close(self):
        self.progress.close()


class TrainingLog:
    """The run's CSV log (one row per logged iteration) and its PNG plot of the curves.

    Args:
        path: the CSV file; the plot goes beside it with a .png suffix.
        fields: column names; 'iteration' must be first.
        resume_from: on a resumed run, the checkpoint's iteration: rows after it (logged by the
            interrupted run after its last checkpoint) are dropped, so the log tells one story.
    """

    def __init__(self, path, fields, resume_from=0):
        self.path, self.fields = path, list(fields)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.rows = []
        if resume_from and os.path.isfile(path):
            with open(path, newline='') as f:
                self.rows = [row for row in csv.DictReader(f) if int(row['iteration']) <= resume_from]
        self._write()

    def log(self, **values):
        """Append one row (missing fields stay empty) and rewrite the CSV."""
        self.rows.append({field: values.get(field, '') for field in self.fields})
        self._write()

    def _write(self):
        with utils.atomic_write(self.path, 'w', newline='', exists='replace') as f:  # the run's own (refuse_to_overwrite)
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(self.rows)

    def plot(self, panels):
        """Draw the curves to <path>.png.

        panels: {panel title: [field, ...]}, one subplot per title, each field a curve against
        iteration. Fields named like 'val_*' are drawn with markers (they are sparse).
        """
        import matplotlib
        matplotlib.use('Agg')  # no display needed
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
        for ax, (title, fields) in zip(axes[0], panels.items()):
            for field in fields:
                points = [(int(row['iteration']), float(row[field])) for row in self.rows if row[field] != '']
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, marker='o' if field.startswith('val_') else None, markersize=3, label=field)
            ax.set_title(title)
            ax.set_xlabel('iteration')
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        utils.save_figure(fig, os.path.splitext(self.path)[0] + '.png', exists='replace')  # the run's own
        plt.close(fig)


def all_finite(tensors):
    """True when every element of every tensor is finite (no NaN, no inf)."""
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def validate(model, dataset, device, scaling_factor):
    """Mean (PSNR, SSIM) of a model in training over a validation dataset, in float32 (whatever the
    training precision); the model is put back in train mode."""
    model.eval()
    scores = utils.evaluate_sr(unwrap(model), dataset, device, scaling_factor)
    model.train()
    return sum(s[0] for s in scores) / len(scores), sum(s[1] for s in scores) / len(scores)
