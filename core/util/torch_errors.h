// Turning exceptions from LibTorch into messages at the boundaries that
// catch them (a forward pass, a training step). LibTorch mostly throws
// c10::Error, but some checks throw standard exceptions (a scalar that
// overflows its dtype throws std::runtime_error), so boundaries catch
// std::exception and name it with this.
#ifndef OPTREC_CORE_UTIL_TORCH_ERRORS_H_
#define OPTREC_CORE_UTIL_TORCH_ERRORS_H_

#include <exception>
#include <string>

namespace optrec {

// c10::Error's message without its C++ backtrace; what() of anything else.
std::string TorchErrorMessage(const std::exception& e);

}  // namespace optrec

#endif  // OPTREC_CORE_UTIL_TORCH_ERRORS_H_
