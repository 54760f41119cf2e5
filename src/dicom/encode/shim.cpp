// The C ABI Kura's Rust code calls to encode one frame losslessly as a JPEG 2000 codestream
// (OpenJPEG 2.5, C) or an HTJ2K codestream (OpenJPH 0.9, C++). Kept as small as it can be: the
// Rust side (src/dicom/encode/j2k.rs) checks sizes, prepares the samples and owns the policy;
// this file only drives the libraries and turns their errors and exceptions into a status.
//
// Samples come component after component (all of component 0, then 1, ...), one int32 each,
// already masked (unsigned) or sign-extended (signed) to `bits`.

#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

// build.rs links OpenJPEG with its symbols renamed kura_opj_… (see there why).
#define opj_image_create kura_opj_image_create
#define opj_image_destroy kura_opj_image_destroy
#define opj_set_default_encoder_parameters kura_opj_set_default_encoder_parameters
#define opj_create_compress kura_opj_create_compress
#define opj_set_error_handler kura_opj_set_error_handler
#define opj_set_warning_handler kura_opj_set_warning_handler
#define opj_set_info_handler kura_opj_set_info_handler
#define opj_stream_create kura_opj_stream_create
#define opj_stream_set_user_data kura_opj_stream_set_user_data
#define opj_stream_set_write_function kura_opj_stream_set_write_function
#define opj_stream_set_skip_function kura_opj_stream_set_skip_function
#define opj_stream_set_seek_function kura_opj_stream_set_seek_function
#define opj_setup_encoder kura_opj_setup_encoder
#define opj_start_compress kura_opj_start_compress
#define opj_encode kura_opj_encode
#define opj_end_compress kura_opj_end_compress
#define opj_stream_destroy kura_opj_stream_destroy
#define opj_destroy_codec kura_opj_destroy_codec
#include <openjpeg.h>

#include <ojph_arch.h>
#include <ojph_codestream.h>
#include <ojph_file.h>
#include <ojph_mem.h>
#include <ojph_message.h>
#include <ojph_params.h>

namespace {

void set_error(char* err, size_t err_len, const std::string& text) {
  if (err == nullptr || err_len == 0) return;
  size_t n = text.size() < err_len - 1 ? text.size() : err_len - 1;
  std::memcpy(err, text.data(), n);
  err[n] = '\0';
}

// Hands a finished codestream to Rust: malloc'ed, freed by kura_codec_free.
int hand_over(const uint8_t* data, size_t len, uint8_t** out, size_t* out_len, char* err, size_t err_len) {
  uint8_t* copy = static_cast<uint8_t*>(std::malloc(len == 0 ? 1 : len));
  if (copy == nullptr) {
    set_error(err, err_len, "out of memory");
    return -1;
  }
  std::memcpy(copy, data, len);
  *out = copy;
  *out_len = len;
  return 0;
}

// ---------------------------------------------------------------- OpenJPEG (JPEG 2000)

struct Sink {
  std::vector<uint8_t> bytes;
  size_t position = 0;
};

OPJ_SIZE_T sink_write(void* buffer, OPJ_SIZE_T n, void* user) {
  Sink* sink = static_cast<Sink*>(user);
  if (sink->position + n > sink->bytes.size()) sink->bytes.resize(sink->position + n);
  std::memcpy(sink->bytes.data() + sink->position, buffer, n);
  sink->position += n;
  return n;
}

OPJ_OFF_T sink_skip(OPJ_OFF_T n, void* user) {
  Sink* sink = static_cast<Sink*>(user);
  if (n < 0 && static_cast<size_t>(-n) > sink->position) return -1;
  sink->position = static_cast<size_t>(static_cast<OPJ_OFF_T>(sink->position) + n);
  if (sink->position > sink->bytes.size()) sink->bytes.resize(sink->position);
  return n;
}

OPJ_BOOL sink_seek(OPJ_OFF_T n, void* user) {
  Sink* sink = static_cast<Sink*>(user);
  if (n < 0) return OPJ_FALSE;
  sink->position = static_cast<size_t>(n);
  if (sink->position > sink->bytes.size()) sink->bytes.resize(sink->position);
  return OPJ_TRUE;
}

void opj_message(const char* msg, void* user) {
  std::string* text = static_cast<std::string*>(user);
  if (text->empty()) *text = msg;
  while (!text->empty() && (text->back() == '\n' || text->back() == '\r')) text->pop_back();
}

void opj_quiet(const char*, void*) {}

int encode_openjpeg(const int32_t* samples, uint32_t width, uint32_t height, uint32_t components, uint32_t bits,
                    int is_signed, uint32_t levels, uint8_t** out, size_t* out_len, char* err, size_t err_len) {
  std::vector<opj_image_cmptparm_t> params(components);
  for (uint32_t c = 0; c < components; c++) {
    std::memset(&params[c], 0, sizeof(opj_image_cmptparm_t));
    params[c].dx = 1;
    params[c].dy = 1;
    params[c].w = width;
    params[c].h = height;
    params[c].prec = bits;
    params[c].sgnd = is_signed ? 1 : 0;
  }
  OPJ_COLOR_SPACE space = components == 3 ? OPJ_CLRSPC_SRGB : OPJ_CLRSPC_GRAY;
  opj_image_t* image = opj_image_create(components, params.data(), space);
  if (image == nullptr) {
    set_error(err, err_len, "OpenJPEG could not create the image");
    return -1;
  }
  image->x0 = 0;
  image->y0 = 0;
  image->x1 = width;
  image->y1 = height;
  size_t plane = static_cast<size_t>(width) * height;
  for (uint32_t c = 0; c < components; c++) {
    std::memcpy(image->comps[c].data, samples + plane * c, plane * sizeof(int32_t));
  }

  opj_cparameters_t parameters;
  opj_set_default_encoder_parameters(&parameters);
  parameters.tcp_numlayers = 1;
  parameters.tcp_rates[0] = 0;  // 0: no rate target, every bit kept (lossless)
  parameters.cp_disto_alloc = 1;
  parameters.irreversible = 0;  // the reversible 5/3 wavelet
  parameters.numresolution = static_cast<int>(levels) + 1;
  parameters.prog_order = OPJ_RPCL;
  parameters.tcp_mct = 0;  // no colour transform: Photometric Interpretation stays RGB

  std::string message;
  opj_codec_t* codec = opj_create_compress(OPJ_CODEC_J2K);
  opj_set_error_handler(codec, opj_message, &message);
  opj_set_warning_handler(codec, opj_quiet, nullptr);
  opj_set_info_handler(codec, opj_quiet, nullptr);
  Sink sink;
  opj_stream_t* stream = opj_stream_create(1 << 20, OPJ_FALSE);
  opj_stream_set_user_data(stream, &sink, nullptr);
  opj_stream_set_write_function(stream, sink_write);
  opj_stream_set_skip_function(stream, sink_skip);
  opj_stream_set_seek_function(stream, sink_seek);

  bool ok = opj_setup_encoder(codec, &parameters, image) && opj_start_compress(codec, image, stream) &&
            opj_encode(codec, stream) && opj_end_compress(codec, stream);
  opj_stream_destroy(stream);
  opj_destroy_codec(codec);
  opj_image_destroy(image);
  if (!ok) {
    set_error(err, err_len, message.empty() ? "OpenJPEG failed to encode" : "OpenJPEG: " + message);
    return -1;
  }
  return hand_over(sink.bytes.data(), sink.bytes.size(), out, out_len, err, err_len);
}

// ---------------------------------------------------------------- OpenJPH (HTJ2K)

// OpenJPH reports errors by calling a global handler that prints and throws; these replace the
// printing with an exception that carries the text, and silence warnings and information.
class ThrowingError : public ojph::message_error {
 public:
  void operator()(int code, const char*, int, const char* fmt, ...) override {
    char text[512];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    throw std::runtime_error(std::string(text) + " (code " + std::to_string(code) + ")");
  }
};

class QuietWarning : public ojph::message_warning {
 public:
  void operator()(int, const char*, int, const char*, ...) override {}
};

class QuietInfo : public ojph::message_info {
 public:
  void operator()(int, const char*, int, const char*, ...) override {}
};

ThrowingError throwing_error;
QuietWarning quiet_warning;
QuietInfo quiet_info;
std::once_flag configured;

int encode_openjph(const int32_t* samples, uint32_t width, uint32_t height, uint32_t components, uint32_t bits,
                   int is_signed, uint32_t levels, uint8_t** out, size_t* out_len, char* err, size_t err_len) {
  std::call_once(configured, [] {
    ojph::configure_error(&throwing_error);
    ojph::configure_warning(&quiet_warning);
    ojph::configure_info(&quiet_info);
  });
  try {
    ojph::codestream codestream;
    ojph::param_siz siz = codestream.access_siz();
    siz.set_image_extent(ojph::point(width, height));
    siz.set_num_components(components);
    for (uint32_t c = 0; c < components; c++) {
      siz.set_component(c, ojph::point(1, 1), bits, is_signed != 0);
    }
    siz.set_image_offset(ojph::point(0, 0));
    siz.set_tile_size(ojph::size(width, height));
    siz.set_tile_offset(ojph::point(0, 0));
    ojph::param_cod cod = codestream.access_cod();
    cod.set_num_decomposition(levels);
    cod.set_block_dims(64, 64);
    // Resolution-major order: all of the lowest resolution (every position and component)
    // comes first, so the first bytes already decode to a reduced image.
    cod.set_progression_order("RPCL");
    cod.set_color_transform(false);
    cod.set_reversible(true);
    codestream.set_planar(true);

    ojph::mem_outfile file;
    file.open();
    codestream.write_headers(&file);
    std::vector<uint32_t> next_row(components, 0);
    size_t plane = static_cast<size_t>(width) * height;
    ojph::ui32 component = 0;
    ojph::line_buf* line = codestream.exchange(nullptr, component);
    for (size_t n = 0; n < plane / width * components; n++) {
      if (component >= components || next_row[component] >= height) {
        throw std::runtime_error("OpenJPH asked for a line that does not exist");
      }
      const int32_t* row = samples + plane * component + static_cast<size_t>(next_row[component]) * width;
      std::memcpy(line->i32, row, width * sizeof(int32_t));
      next_row[component]++;
      line = codestream.exchange(line, component);
    }
    codestream.flush();
    int status = hand_over(file.get_data(), static_cast<size_t>(file.tell()), out, out_len, err, err_len);
    codestream.close();
    return status;
  } catch (const std::exception& e) {
    set_error(err, err_len, std::string("OpenJPH: ") + e.what());
    return -1;
  } catch (...) {
    set_error(err, err_len, "OpenJPH failed to encode");
    return -1;
  }
}

}  // namespace

extern "C" int kura_j2k_encode(const int32_t* samples, uint32_t width, uint32_t height, uint32_t components,
                               uint32_t bits, int is_signed, uint32_t levels, int high_throughput, uint8_t** out,
                               size_t* out_len, char* err, size_t err_len) {
  try {
    if (high_throughput) {
      return encode_openjph(samples, width, height, components, bits, is_signed, levels, out, out_len, err, err_len);
    }
    return encode_openjpeg(samples, width, height, components, bits, is_signed, levels, out, out_len, err, err_len);
  } catch (...) {
    set_error(err, err_len, "the JPEG 2000 encoder failed");
    return -1;
  }
}

extern "C" void kura_codec_free(uint8_t* data) { std::free(data); }
