// Compiled only to produce the precompiled LibTorch header that the optrec
// libraries share (see core/CMakeLists.txt).
